"""`make demo`: the main job on the embedded SmolLM2, on CPU, in about 15 minutes.

1. Stage-1 CTR codebook (LM frozen) on 20 short-input tasks of the T0 sample: sentiment
   (`amazon_polarity_*`), topic (`ag_news_*`) and paraphrase (`glue_qqp_*`), 40 steps of 8
   examples of at most 64 source tokens. Prints the loss curve, the code table by task type and codebook use.
   `--stage1 NAME` starts from a released codebook of these 20 tasks instead (e.g.
   `smollm2-near20-s1` under checkpoints/, or any stage-1 run folder), as a user starts
   from a released model: no stage-1 training, offline.
2. Stage 2 from that codebook (LM trained too) and the multi-task prompted baseline (the
   same LM training without codes), the same data, 50 steps each.
3. SST-2, a held-out sentiment dataset (neither SST-2 nor Rotten Tomatoes is in the
   mixture): the bare backbone, the baseline, and CTR zero-label (Code Ensemble over the
   20 training codes, 16 unlabelled inputs, no label read) after each stage, side by side,
   on 100 validation examples x 2 templates.
4. What the codes did: the stage-2 model on the same SST-2 examples under the best code of
   each task type, and how much the training codes agree with their majority vote.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from ctr.adapt.zero_label import ZeroLabelConfig, run_zero_label
from ctr.analysis.stats import paired_effect
from ctr.config import CTRConfig, TrainConfig
from ctr.core.model import read_config
from ctr.core.loading import load_model, require_model_dir
from ctr.fileio import write_json
from ctr.inference.evaluate import EvalConfig, evaluate
from ctr.provenance import provenance
from ctr.tasks.mixture import data_dir, read_manifest
from ctr.train.trainer import summarize_run, train

# The mixture: every T0-sample template of three short-input datasets, one per task type.
MIXTURE = [f"amazon_polarity_{t}" for t in (
    "Is_this_product_review_positive", "Is_this_review", "Is_this_review_negative",
    "User_recommend_this_product", "convey_negative_or_positive_sentiment", "flattering_or_not",
    "negative_or_positive_tone", "user_satisfied", "would_you_buy")] + [f"ag_news_{t}" for t in (
    "classify", "classify_question_first", "classify_with_choices",
    "classify_with_choices_question_first", "recommend", "which_section",
    "which_section_choices")] + [f"glue_qqp_{t}" for t in (
    "answer", "duplicate", "duplicate_or_not", "meaning")]
HELD_OUT = "glue_sst2"
EXAMPLES, TEMPLATES = 100, 2  # SST-2 validation examples (seeded) x its first templates


def task_types(names: list[str]) -> dict[str, str]:
    types = {Path(f).stem: row["task_type"] for f, row in read_manifest(data_dir()).items()}
    return {n: types.get(n, "?") for n in names}


def print_stage1(run: Path, types: dict[str, str]) -> None:
    print()
    print(summarize_run(run).split("## Code table")[0])
    table = json.loads((run / "code_table.json").read_text())
    print("## Codes by task type\n")
    for ttype in sorted(set(types.values())):
        for name, code in table.items():
            if types.get(name) == ttype:
                print(f"{ttype:<22} {' '.join(f'{c:3d}' for c in code)}  {name}")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    print(f"\ncodebook use: {last['distinct_values']} distinct values over {len(table)} tasks; "
          f"per-position perplexity {last['code_perplexity']}\n")


@dataclass
class Released:
    folder: Path
    config: CTRConfig


def released_stage1(name: str, model: str) -> Released:
    """The stage-1 codebook --stage1 names: a frozen-LM model of the demo's 20 tasks on
    --model's backbone (anything else would train stage 2 on other tasks or another LM)."""
    folder = require_model_dir(name, "--stage1")
    cfg = read_config(folder)
    if sorted(cfg.task_names) != sorted(MIXTURE):
        raise ValueError(f"--stage1 {name}: trained on {len(cfg.task_names)} tasks that are not the "
                         f"demo's {len(MIXTURE)} (ctr.demo.MIXTURE); release a stage 1 of those tasks")
    if cfg.backbone != model:
        raise ValueError(f"--stage1 {name}: its backbone is {cfg.backbone!r}, the demo's --model is "
                         f"{model!r}: pass --model {cfg.backbone}")
    if not cfg.use_codes:
        raise ValueError(f"--stage1 {name}: a model without codes is no stage-1 codebook")
    return Released(folder, cfg)


def by_type(ranked: list[dict[str, Any]], types: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per task type: the code that agrees most with the majority vote (`ranked` is best
    first), the task it belongs to, and the agreements of all the type's codes."""
    best: dict[str, dict[str, Any]] = {}
    for r in ranked:
        for t in r["tasks"]:
            entry = best.setdefault(types.get(t, "?"), {"code": r["code"], "task": t, "agreements": []})
            entry["agreements"].append(r["agreement"])
    return best


def per_example(res: dict[str, Any]) -> dict[int, float]:
    """Example index -> share of the templates that got it right (one task's results)."""
    hits: dict[int, list[int]] = {}
    for t in res["templates"].values():
        for i, c in zip(t["indices"], t["correct"]):
            hits.setdefault(i, []).append(c == "1")
    return {i: sum(h) / len(h) for i, h in hits.items()}


def versus(res: dict[str, Any], ref: dict[str, Any]) -> str:
    """Accuracy difference to `ref` in points, with a paired bootstrap 95% interval over the
    examples both scored."""
    a, b = per_example(res), per_example(ref)
    common = sorted(set(a) & set(b))
    e = paired_effect([a[i] for i in common], [b[i] for i in common], n_boot=2000, seed=0)
    return f"{100 * e['diff']:+.1f} [{100 * e['ci_low']:+.1f}, {100 * e['ci_high']:+.1f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default="runs/demo")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=None, help="stage-1 steps (default: the cpu-demo preset's)")
    ap.add_argument("--stage2-steps", type=int, default=None,
                    help="steps of stage 2 and of the baseline (default: the cpu-demo preset's)")
    ap.add_argument("--stage1", default=None, metavar="NAME",
                    help="a released codebook (or stage-1 run) of the demo's 20 tasks to start from "
                         "instead of training stage 1, e.g. smollm2-near20-s1")
    ap.add_argument("--examples", type=int, default=EXAMPLES, help="SST-2 examples scored")
    ap.add_argument("--limit-examples", type=int, default=None,
                    help="training examples kept per task (quick checks)")
    args = ap.parse_args(argv)
    if args.stage1 and args.steps is not None:
        ap.error("--steps sets the stage-1 training that --stage1 replaces: pass one of them")
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # a demo always starts fresh
    print(f"[demo] data: {data_dir()}")
    t0 = time.time()
    types = task_types(MIXTURE)
    released = released_stage1(args.stage1, args.model) if args.stage1 else None
    common = dict(model=args.model, preset="cpu-demo", mixing="balanced",
                  tasks=released.config.task_names if released else MIXTURE,  # stage 2 keeps its order
                  max_source_len=64, max_target_len=8, save_every=1000,
                  limit_examples=args.limit_examples)

    # 1. stage 1: the codebook and code decoder learn, the LM is frozen (or a released one)
    if released:
        s1 = released.folder
        print(f"[demo] stage 1: the released codebook {args.stage1} ({s1}), not trained here")
    else:
        s1 = out / "stage1"
        train(TrainConfig(output_dir=str(s1), stage=1, steps=args.steps, **common))
    print_stage1(s1, types)
    # 2. stage 2 from the codebook, and the baseline: the same LM training without codes
    s2, mt = out / "stage2", out / "multitask"
    train(TrainConfig(output_dir=str(s2), stage=2, init_from=str(s1), steps=args.stage2_steps, **common))
    train(TrainConfig(output_dir=str(mt), stage=2, no_codes=True, steps=args.stage2_steps, **common))

    # 3. the held-out task: every column on the same examples and templates
    scope = dict(tasks=[HELD_OUT], max_examples=args.examples)
    zl = {stage: run_zero_label(ZeroLabelConfig(
        checkpoint=str(run), n_inputs=16, max_templates=1, eval_max_templates=TEMPLATES,
        output_dir=str(out / f"zero_label_{stage}"), **scope)) for stage, run in (("s1", s1), ("s2", s2))}

    def column(model, **kw) -> dict[str, Any]:  # one model (and code) on those examples
        return evaluate(model, EvalConfig(max_templates=TEMPLATES, **scope, **kw))["tasks"][HELD_OUT]
    backbone = column(load_model(args.model))
    baseline = column(load_model(str(mt)))
    rows = [("backbone zero-shot", "-", backbone), ("multi-task prompted baseline (no codes)", "-", baseline)]
    for stage, name in (("s1", "CTR stage 1 (LM frozen), zero-label"), ("s2", "CTR stage 2, zero-label")):
        sel = zl[stage]["selection"][HELD_OUT]
        rows.append((name, sel["from_tasks"][0], zl[stage]["results"]["tasks"][HELD_OUT]))

    # 4. what the codes did: the stage-2 model under the best code of each task type
    ranked = {stage: zl[stage]["selection"][HELD_OUT]["ranked"] for stage in zl}
    agreement = {stage: mean(r["agreement"] for r in rs) for stage, rs in ranked.items()}
    model2 = load_model(str(s2))
    chosen = zl["s2"]["results"]["tasks"][HELD_OUT]  # the selected code leads its type: scored already
    per_type = [(ttype, e, chosen if e["code"] == chosen["code"]
                 else column(model2, code=",".join(map(str, e["code"]))))
                for ttype, e in sorted(by_type(ranked["s2"], types).items())]

    lines = [f"\n## {HELD_OUT}, held out ({args.examples} validation examples x first {TEMPLATES} templates, "
             f"median accuracy %; vs backbone: difference of the mean over templates, paired "
             f"bootstrap 95% interval over examples)\n",
             "| method | code from | accuracy | vs backbone |", "|---|---|---:|---:|"]
    lines += [f"| {name} | {src} | {res['median']:.1f} | {versus(res, backbone) if res is not backbone else '-'} |"
              for name, src, res in rows]
    lines += ["", "## What the codes did\n",
              "The stage-2 model on the same examples under the code of each task type that agrees",
              "most with the training codes' majority vote (selection inputs, no labels):\n",
              "| task type | code of | accuracy | vs backbone | mean agreement of the type's codes |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {ttype} | {e['task']} | {res['median']:.1f} | {versus(res, backbone)} | "
              f"{mean(e['agreements']):.2f} |" for ttype, e, res in per_type]
    lines += ["", "| model | mean agreement of the 20 codes with their majority vote |", "|---|---:|"]
    lines += [f"| stage {stage[1]} | {agree:.2f} |" for stage, agree in agreement.items()]
    print("\n".join(lines))
    (out / "demo_table.md").write_text("\n".join(lines) + "\n")
    write_json(out / "demo_results.json", {  # every scored column, per template and example
        "rows": {name: res for name, _, res in rows},
        "per_type": {ttype: {"task": e["task"], "code": e["code"], "result": res} for ttype, e, res in per_type},
        "provenance": provenance()})
    print(f"\nchance: 50%. A 135M LM on {len(MIXTURE)} tasks for a few dozen steps; codes that agree "
          f"with their majority less often change more answers.\n"
          f"[demo] done in {time.time() - t0:.0f}s; outputs in {out}")


if __name__ == "__main__":
    main()
