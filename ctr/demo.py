"""`make demo`: CTR on the embedded SmolLM2, on a CPU, from the project's released models.

1. A short live stage-1 run on the demo's mixture: 20 short-input tasks of the T0 sample,
   sentiment (`amazon_polarity_*`), topic (`ag_news_*`) and paraphrase (`glue_qqp_*`). It
   prints a falling loss and the code table by task type; it is not used afterwards.
2. From the releases under checkpoints/ (trained by `ctr train` on that mixture, loaded by
   name, offline): SST-2, a held-out sentiment dataset (neither SST-2 nor Rotten Tomatoes is
   in the mixture), seeded validation examples x every original template, for the bare
   backbone, the multi-task prompted baseline (LoRA), CTR stage-1 and stage-2 (LoRA)
   zero-label (Code Ensemble over the 20 training codes, 16 unlabelled training inputs, no
   label read). Each column with a 95% bootstrap interval over examples, each against the
   backbone and CTR stage 2 against the baseline, paired over the same examples.
3. What the codes did: the code chosen, its training task, and how much the training codes
   agree with their majority vote.

`--train` (`make demo-train`) trains stage 1, stage 2 and the baseline from scratch instead
of loading the releases (the `cpu-demo` preset: 40 + 50 + 50 steps) and prints the same table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from ctr.adapt.zero_label import ZeroLabelConfig, run_zero_label
from ctr.analysis.stats import bootstrap_ci, paired_effect
from ctr.config import CTRConfig, TrainConfig
from ctr.core.model import read_config
from ctr.core.loading import load_model, require_model_dir
from ctr.fileio import read_jsonl, write_json
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
EXAMPLES = 120  # SST-2 validation examples (seeded) scored per column, what fits 6 minutes; 0: all 872
LIVE_STEPS = 16  # the live stage-1 run of the release demo
# The releases the demo loads (checkpoints/NAME/README.md: how each was trained).
RELEASES = {"s1": "smollm2-near20-s1", "s2": "smollm2-near20-s2-lora", "mt": "smollm2-near20-baseline-lora"}


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


def per_example(res: dict[str, Any]) -> dict[int, float]:
    """Example index -> share of the templates that got it right (one task's results)."""
    hits: dict[int, list[int]] = {}
    for t in res["templates"].values():
        for i, c in zip(t["indices"], t["correct"]):
            hits.setdefault(i, []).append(c == "1")
    return {i: sum(h) / len(h) for i, h in hits.items()}


def interval(res: dict[str, Any]) -> str:
    """Mean accuracy over templates and examples, with its bootstrap 95% interval over examples."""
    mean_, lo, hi = bootstrap_ci(list(per_example(res).values()), n_boot=2000, seed=0)
    return f"{100 * mean_:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def versus(res: dict[str, Any], ref: dict[str, Any]) -> str:
    """Accuracy difference to `ref` in points, with a paired bootstrap 95% interval over the
    examples both scored."""
    a, b = per_example(res), per_example(ref)
    common = sorted(set(a) & set(b))
    e = paired_effect([a[i] for i in common], [b[i] for i in common], n_boot=2000, seed=0)
    return f"{100 * e['diff']:+.1f} [{100 * e['ci_low']:+.1f}, {100 * e['ci_high']:+.1f}]"


@dataclass
class Models:
    """The three models the table compares (folders or release names) and where they came from."""
    s1: str
    s2: str
    mt: str
    source: str


def live_stage1(out: Path, common: dict[str, Any], steps: int, types: dict[str, str]) -> None:
    """A short stage-1 run, shown and not used afterwards."""
    run = out / "live_stage1"
    print(f"[demo] 1. a live stage-1 run: {steps} steps on the mixture (the LM frozen; shown, not used)")
    train(TrainConfig(output_dir=str(run), stage=1, steps=steps, **common))
    print_stage1(run, types)
    losses = [r["lm_loss"] for r in read_jsonl(run / "metrics.jsonl")]
    k = max(1, len(losses) // 4)  # one batch of 8 is noisy: the first and last quarters' means
    print(f"LM loss, mean of the first {k} steps -> the last {k}: "
          f"{mean(losses[:k]):.2f} -> {mean(losses[-k:]):.2f}\n")


def release_models(model: str) -> Models:
    """The releases of RELEASES, checked (sha256 of every file) and on --model's backbone."""
    for name in RELEASES.values():
        folder = require_model_dir(name, "demo release")
        cfg = read_config(folder)
        if cfg.backbone != model:
            raise ValueError(f"release {name} ({folder}) is on the backbone {cfg.backbone!r}, not "
                             f"--model {model!r}: run the demo with --model {cfg.backbone}, or --train")
    return Models(RELEASES["s1"], RELEASES["s2"], RELEASES["mt"], "the releases under checkpoints/")


def trained(out: Path, args: argparse.Namespace, common: dict[str, Any], types: dict[str, str]) -> Models:
    """Stage 1 (or a released codebook), stage 2 from it and the baseline, trained here."""
    stage1 = released_stage1(args.stage1, args.model) if args.stage1 else None
    common = {**common, "tasks": stage1.config.task_names if stage1 else MIXTURE}  # stage 2 keeps its order
    if stage1:
        s1 = stage1.folder
        print(f"[demo] stage 1: the released codebook {args.stage1} ({s1}), not trained here")
    else:
        s1 = out / "stage1"
        train(TrainConfig(output_dir=str(s1), stage=1, steps=args.steps, **common))
    print_stage1(s1, types)
    s2, mt = out / "stage2", out / "multitask"
    train(TrainConfig(output_dir=str(s2), stage=2, init_from=str(s1), steps=args.stage2_steps, **common))
    train(TrainConfig(output_dir=str(mt), stage=2, no_codes=True, steps=args.stage2_steps, **common))
    return Models(str(s1), str(s2), str(mt), "trained by this demo")


def compare(out: Path, backbone_name: str, models: Models, examples: int | None,
            templates: int | None) -> dict[str, Any]:
    """SST-2: every column on the same examples and templates; the table, printed and saved."""
    scope = dict(tasks=[HELD_OUT], max_examples=examples)
    zl = {stage: run_zero_label(ZeroLabelConfig(
        checkpoint=run, n_inputs=16, max_templates=1, eval_max_templates=templates,
        output_dir=str(out / f"zero_label_{stage}"), **scope)) for stage, run in (("s1", models.s1), ("s2", models.s2))}

    def column(name: str) -> dict[str, Any]:
        print(f"[demo] scoring {name} on {HELD_OUT}", flush=True)
        return evaluate(load_model(name), EvalConfig(max_templates=templates, **scope))["tasks"][HELD_OUT]
    backbone, baseline = column(backbone_name), column(models.mt)
    s2 = zl["s2"]["results"]["tasks"][HELD_OUT]
    rows = [("backbone zero-shot", "-", backbone), ("multi-task prompted baseline (no codes)", "-", baseline)]
    for stage, name in (("s1", "CTR stage 1 (LM frozen), zero-label"), ("s2", "CTR stage 2, zero-label")):
        rows.append((name, zl[stage]["selection"][HELD_OUT]["from_tasks"][0], zl[stage]["results"]["tasks"][HELD_OUT]))

    n = len(per_example(backbone))
    n_templates = len(backbone["templates"])
    lines = [f"\n## {HELD_OUT}, held out: {n} validation examples x {n_templates} templates "
             f"(models: {models.source})\n",
             "Accuracy %: mean over templates and examples, bootstrap 95% interval over examples; "
             "differences paired over the same examples.\n",
             "| method | code from | accuracy, 95% interval | median over templates | vs backbone |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {name} | {src} | {interval(res)} | {res['median']:.1f} | "
              f"{versus(res, backbone) if res is not backbone else '-'} |" for name, src, res in rows]
    lines += ["", f"**CTR stage 2 zero-label minus the baseline:** {versus(s2, baseline)} points "
              "(the paper's claim: >= 0).", "", "## What the codes did\n",
              "| model | code chosen (no label read) | its training task | its agreement | "
              "mean agreement of the 20 codes with their majority vote |", "|---|---|---|---:|---:|"]
    codes = {}
    for stage, label in (("s1", "CTR stage 1"), ("s2", "CTR stage 2")):
        sel = zl[stage]["selection"][HELD_OUT]
        codes[stage] = {"code": sel["code"], "from_tasks": sel["from_tasks"], "agreement": sel["agreement"],
                        "mean_agreement": mean(r["agreement"] for r in sel["ranked"])}
        c = codes[stage]
        lines.append(f"| {label} | {' '.join(map(str, c['code']))} | {', '.join(c['from_tasks'])} | "
                     f"{c['agreement']:.2f} | {c['mean_agreement']:.2f} |")
    print("\n".join(lines))
    (out / "demo_table.md").write_text("\n".join(lines) + "\n")
    summary = {"models": asdict(models), "examples": n, "templates": n_templates,
               "rows": {name: res for name, _, res in rows}, "codes": codes, "provenance": provenance()}
    write_json(out / "demo_results.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default="runs/demo")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--train", action="store_true",
                    help="train stage 1, stage 2 and the baseline here instead of loading the releases")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"stage-1 steps (--train; default: the cpu-demo preset's; without --train: "
                         f"the live run's, default {LIVE_STEPS})")
    ap.add_argument("--stage2-steps", type=int, default=None,
                    help="--train: steps of stage 2 and of the baseline (default: the cpu-demo preset's)")
    ap.add_argument("--stage1", default=None, metavar="NAME",
                    help="--train: a released codebook (or stage-1 run) of the demo's 20 tasks to start "
                         "from instead of training stage 1, e.g. smollm2-near20-s1")
    ap.add_argument("--examples", type=int, default=EXAMPLES,
                    help="SST-2 validation examples scored (seeded); 0: all 872")
    ap.add_argument("--templates", type=int, default=None, help="first N templates only (default: all)")
    ap.add_argument("--limit-examples", type=int, default=None,
                    help="training examples kept per task (quick checks)")
    args = ap.parse_args(argv)
    if args.stage1 and args.steps is not None:
        ap.error("--steps sets the stage-1 training that --stage1 replaces: pass one of them")
    if not args.train and (args.stage1 or args.stage2_steps is not None):
        ap.error("--stage1 and --stage2-steps choose what --train trains: pass --train")
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # a demo always starts fresh
    print(f"[demo] data: {data_dir()}")
    t0 = time.time()
    types = task_types(MIXTURE)
    common = dict(model=args.model, preset="cpu-demo", mixing="balanced", tasks=MIXTURE,
                  max_source_len=64, max_target_len=8, save_every=1000, limit_examples=args.limit_examples)
    if args.train:
        models = trained(out, args, common, types)
    else:
        models = release_models(args.model)  # checked before anything runs
        live_stage1(out, common, args.steps or LIVE_STEPS, types)
        print(f"[demo] 2. {HELD_OUT} from the releases {', '.join(RELEASES.values())}", flush=True)
    compare(out, args.model, models, args.examples or None, args.templates)
    print(f"\nchance: 50%. [demo] done in {time.time() - t0:.0f}s; outputs in {out}")


if __name__ == "__main__":
    main()
