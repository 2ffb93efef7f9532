"""`make demo`: CTR on the embedded SmolLM2, on CPU, from the project's releases.

1. A short live stage-1 run on the mixture (20 tasks of the T0 sample: sentiment
   `amazon_polarity_*`, topic `ag_news_*`, paraphrase `glue_qqp_*`): its falling loss and the
   codes the tasks got. It shows training; nothing below uses it.
2. From the releases under checkpoints/ (trained on the same 20 tasks by `ctr train`, see their
   model cards), on SST-2, a sentiment dataset that is not in the mixture: the full validation
   set (872 examples) under every original-task template, scored for the bare backbone, the
   multi-task prompted baseline (LoRA, no codes), and CTR stage 1 and stage 2 zero-label (Code
   Ensemble over the 20 training codes on unlabelled training-split inputs, no label read).
   Each with a 95% bootstrap interval over examples, the paired difference to the backbone and
   CTR stage 2 minus the baseline (ctr.experiments.demo_table).
3. What the codes did: the code chosen, its training task, how much the codes agree.

`--train` (`make demo-train`) trains the three models from scratch with the releases' recipe
(`recipe`) instead of loading the releases, then prints the same table.
Outputs: demo_table.md and demo_results.json (every column per template and example, the
timings, provenance) in --output-dir.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from ctr.adapt.code_ensemble import select_code
from ctr.adapt.common import candidate_codes
from ctr.adapt.zero_label import ZeroLabelConfig
from ctr.config import TrainConfig
from ctr.core.locate import require_model_dir
from ctr.core.loading import load_model
from ctr.core.lora import has_lora, merge_lora
from ctr.core.model import CTRModel, read_config
from ctr.experiments.demo_table import Column, markdown, table
from ctr.fileio import read_jsonl, write_json
from ctr.inference.evaluate import EvalConfig, evaluate
from ctr.inference.scoring import RankScorer
from ctr.provenance import hardware, provenance
from ctr.tasks.mixture import data_dir, read_manifest
from ctr.train.trainer import train

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
# The releases the demo scores (checkpoints/NAME), made by `recipe` (their cards say how)
RELEASES = {"s1": "smollm2-near20-s1", "s2": "smollm2-near20-s2-lora", "mt": "smollm2-near20-mt-lora"}
LABELS = {"backbone": "backbone zero-shot", "mt": "multi-task prompted baseline (LoRA, no codes)",
          "s1": "CTR stage 1 (LM frozen), zero-label", "s2": "CTR stage 2 (LoRA), zero-label"}
LIVE_STEPS = 20  # the live stage-1 run: enough for its loss to fall
SELECTION_INPUTS, SELECTION_TEMPLATES = 16, 1  # Code Ensemble: unlabelled inputs x first templates
LORA_LR = 1e-3  # stage 2 and the baseline with --lora (results/demo/README.md: the probes)


def recipe(kind: str, output_dir: str | Path, model: str = "smollm2", init_from: str | None = None,
           **over: Any) -> TrainConfig:
    """How the releases were trained (kind: s1, s2 or mt), on the 20 tasks in the releases'
    order: 100 steps of 8 examples of at most 128 source tokens, balanced over tasks; stage 2
    and the baseline train LoRA adapters (r 16 on the attention projections) at the same budget."""
    common = dict(output_dir=str(output_dir), model=model, preset="cpu-small", steps=100, batch_size=8,
                  micro_batch_size=8, mixing="balanced", max_source_len=128, max_target_len=8,
                  save_every=50, seed=0, tasks=sorted(MIXTURE))
    kinds = {"s1": dict(stage=1),
             "s2": dict(stage=2, init_from=init_from, lora=True, lr=LORA_LR),
             "mt": dict(stage=2, no_codes=True, lora=True, lr=LORA_LR)}
    return TrainConfig(**{**common, **kinds[kind], **over})


def task_types(names: list[str]) -> dict[str, str]:
    types = {Path(f).stem: row["task_type"] for f, row in read_manifest(data_dir()).items()}
    return {n: types.get(n, "?") for n in names}


def print_stage1(run: Path, types: dict[str, str]) -> None:
    """The run's loss (means over fifths of the run) and its codes by task type."""
    records = read_jsonl(run / "metrics.jsonl")
    k = max(1, len(records) // 5)
    parts = [records[i:i + k] for i in range(0, len(records), k)]
    curve = " -> ".join(f"{mean(r['lm_loss'] for r in p):.2f}" for p in parts)
    print(f"\n[demo] stage-1 LM loss, mean over each {k} steps: {curve}")
    table = json.loads((run / "final" / "code_table.json").read_text())
    print(f"[demo] the codes ({len(table)} tasks, by task type):")
    for ttype in sorted(set(types.values())):
        for name, code in table.items():
            if types.get(name) == ttype:
                print(f"  {ttype:<26} {' '.join(f'{c:3d}' for c in code)}  {name}")
    last = records[-1]
    print(f"[demo] codebook use: {last.get('distinct_values', '?')} distinct values\n")


def check_release(key: str, name: str, model: str) -> Path:
    """A model of the demo's 20 tasks on --model's backbone, of the kind `key` needs."""
    folder = require_model_dir(name, f"--{key}")
    cfg = read_config(folder)
    if sorted(cfg.task_names) != sorted(MIXTURE):
        raise ValueError(f"--{key} {name}: trained on {len(cfg.task_names)} tasks that are not the "
                         f"demo's {len(MIXTURE)} (ctr.demo.MIXTURE)")
    if cfg.backbone != model:
        raise ValueError(f"--{key} {name}: its backbone is {cfg.backbone!r}, the demo's --model is "
                         f"{model!r}: pass --model {cfg.backbone}")
    if cfg.use_codes != (key != "mt"):
        raise ValueError(f"--{key} {name}: " + ("a model without codes cannot be zero-label CTR"
                                                if key != "mt" else "the baseline has no codes"))
    return folder


def prepared(model: CTRModel, dtype: str) -> CTRModel:
    """The model as the demo scores it: a LoRA adapter merged into the base weights (the same
    function without the adapter's extra matrix products), in `dtype`."""
    if has_lora(model.backbone):
        merge_lora(model)
    return model.to(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype])).eval()


class Clock:
    """Wall time of each step, for the "where the time goes" table."""

    def __init__(self) -> None:
        self.start, self.steps = time.time(), []

    def run(self, name: str, fn, *a, **kw):
        t = time.time()
        print(f"[demo] {name} ...", flush=True)
        out = fn(*a, **kw)
        self.steps.append((name, round(time.time() - t, 1)))
        print(f"[demo] {name}: {self.steps[-1][1]:.0f}s", flush=True)
        return out

    def markdown(self) -> str:
        total = time.time() - self.start
        lines = ["| step | seconds |", "|---|---:|"] + [f"| {n} | {s:.0f} |" for n, s in self.steps]
        return "\n".join(lines + [f"| **total** | **{total:.0f}** |"])


def score_column(key: str, source: str, args, clock: Clock, out: Path) -> Column:
    """Load one model, select its code (zero-label columns) and score SST-2."""
    model = clock.run(f"{LABELS[key]}: load {source}", lambda: prepared(
        load_model(source, "--model" if key == "backbone" else "--checkpoint"), args.dtype))
    scope = dict(tasks=[HELD_OUT], max_examples=args.examples, batch_size=args.batch_size)
    selection, kw = None, {}
    if model.config.use_codes:
        zl = ZeroLabelConfig(n_inputs=args.selection_inputs, max_templates=SELECTION_TEMPLATES, **scope)
        scorer = RankScorer(model, args.batch_size)
        selection = clock.run(f"{LABELS[key]}: Code Ensemble", select_code, model, HELD_OUT, zl,
                              candidate_codes(model), scorer)
        write_json(out / f"exclude_{key}.json", {HELD_OUT: selection["exclude"]})
        kw = dict(code=",".join(map(str, selection["code"])), exclude_indices=str(out / f"exclude_{key}.json"))
    res = clock.run(f"{LABELS[key]}: score", evaluate, model, EvalConfig(model=source, **scope, **kw))
    del model
    return Column(key, LABELS[key], source, res["tasks"][HELD_OUT], selection)


def train_all(args, out: Path, clock: Clock) -> dict[str, str]:
    """`--train`: the three models from scratch with the releases' recipe."""
    over = dict(steps=args.steps, limit_examples=args.limit_examples)
    over = {k: v for k, v in over.items() if v is not None}
    runs = {k: out / "train" / k for k in ("s1", "s2", "mt")}
    clock.run("train stage 1", train, recipe("s1", runs["s1"], args.model, **over))
    print_stage1(runs["s1"], task_types(MIXTURE))
    clock.run("train stage 2 (LoRA)", train, recipe("s2", runs["s2"], args.model, str(runs["s1"]), **over))
    clock.run("train the baseline (LoRA)", train, recipe("mt", runs["mt"], args.model, **over))
    return {k: str(v) for k, v in runs.items()}


def live_stage1(args, out: Path, clock: Clock) -> None:
    cfg = TrainConfig(output_dir=str(out / "live_stage1"), model=args.model, preset="cpu-demo",
                      steps=args.live_steps, tasks=MIXTURE, mixing="balanced", max_source_len=64,
                      max_target_len=8, save_every=10 ** 6, limit_examples=args.limit_examples)
    clock.run(f"live stage-1 run ({args.live_steps} steps of {cfg.batch_size}; not used below)", train, cfg)
    print_stage1(out / "live_stage1", task_types(MIXTURE))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default="runs/demo")
    ap.add_argument("--model", default="smollm2", help="the backbone the releases were trained on")
    ap.add_argument("--train", action="store_true",
                    help="train the three models from scratch (the releases' recipe) instead of loading them")
    for key, name in RELEASES.items():
        ap.add_argument(f"--{key}", default=name, metavar="NAME",
                        help=f"release (or run folder) of {LABELS[key]} (default {name})")
    ap.add_argument("--live-steps", type=int, default=LIVE_STEPS, help="steps of the live stage-1 run (0: none)")
    ap.add_argument("--examples", type=int, default=None, help="SST-2 validation examples (default: all 872)")
    ap.add_argument("--selection-inputs", type=int, default=SELECTION_INPUTS,
                    help="unlabelled inputs of the Code Ensemble")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="precision of scoring (bf16: about 1.8x faster on a CPU with AVX512-BF16; "
                         "a few outcomes of near-tied examples change)")
    ap.add_argument("--batch-size", type=int, default=16, help="inputs per scoring batch")
    ap.add_argument("--steps", type=int, default=None, help="--train: steps of each run (quick checks)")
    ap.add_argument("--limit-examples", type=int, default=None,
                    help="training examples kept per task (quick checks)")
    args = ap.parse_args(argv)
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # a demo always starts fresh
    out.mkdir(parents=True)
    print(f"[demo] data: {data_dir()}; torch threads: {torch.get_num_threads()}", flush=True)
    clock = Clock()
    if args.train:
        sources = train_all(args, out, clock)
    else:
        if args.live_steps:
            live_stage1(args, out, clock)
        sources = {k: getattr(args, k) for k in RELEASES}
        for key, name in sources.items():
            check_release(key, name, args.model)
    columns = [score_column("backbone", args.model, args, clock, out)]
    columns += [score_column(k, sources[k], args, clock, out) for k in ("mt", "s1", "s2")]
    result = table(columns, HELD_OUT, "backbone", [("s2", "mt"), ("s1", "mt")])
    n = columns[0].record["examples"]
    templates = len(result["rows"][0]["templates"])
    title = (f"{HELD_OUT}, held out: {n} validation examples x {templates} original templates "
             f"({'trained here' if args.train else 'models from the releases'}; scored in {args.dtype})")
    text = markdown(result, title)
    timing = clock.markdown()
    print("\n" + text + "\n\n## Where the time went\n\n" + timing)
    (out / "demo_table.md").write_text(text + "\n\n## Where the time went\n\n" + timing + "\n")
    saved = {"table": result, "columns": {c.key: dataclasses.asdict(c) for c in columns},
             "timings": dict(clock.steps), "seconds": round(time.time() - clock.start, 1),
             "args": vars(args), "hardware": hardware(), "provenance": provenance(argv)}
    write_json(out / "demo_results.json", saved)
    print(f"\nchance: 50%. [demo] done in {saved['seconds']:.0f}s; outputs in {out}")
    return saved


if __name__ == "__main__":
    main()
