"""The codebook-collapse proxy: a stage 1 small enough for a 2-core CPU that still shows
what a long GPU run does to the codebook, and the table that compares recipes on it.

    python -m ctr.experiments.codebook_proxy --recipes prompt stable --seeds 0 1 \\
        --runs runs/codebook_proxy --out results/codebook_proxy [--near]

One run: SmolLM2 frozen, every T0 sample task with more than one answer (251), sources cut
to 32 tokens and targets to 16, 600 steps of 8 rows with the cpu-small schedule (lr 1e-2,
cosine to 0.1x), every step logged. On one H200, 978 steps of 64 rows with the prompt
recipe took the mean code perplexity from 99.8 to 3.3 and put one value on 55% of the
table; this proxy takes the same recipe through the same fall (the README of the results
folder has both trajectories). Each recipe is a set of `ctr train` options (`RECIPES`),
trained per seed into RUNS/RECIPE/seedS (a finished run is kept, not retrained; a cut one
continues from its last checkpoint).

The table, per recipe (mean over seeds, each seed beside it): the health trajectory
(`ctr.core.code_health` figures at every PROBE_STEPS step), the final health against its
goals, and the mean training LM loss of the last 10% of steps (every recipe sees the same
batches for a seed, so the losses are paired). `--near` adds, per run, Code Ensemble
zero-label on the near suite (SST-2 validation, TREC, AG News: at most 1000 examples each)
and the bare backbone once, as the lent-GPU run scored them: each against the backbone with
a paired bootstrap interval over the evaluation examples. `--near-tasks` scores some tasks
(into RUN/near_TASK), `--selection-seeds` repeats the selection on other unlabelled inputs
(RUN/near_TASK_selS), so that a run's zero-label shows how much one selection moves it.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

from ctr.adapt.zero_label import ZeroLabelConfig, run_zero_label
from ctr.config import RESOLVED_CONFIG_FILE, TRAIN_CONFIG_FILE, TrainConfig
from ctr.core.code_health import GOALS, HEALTH_FILE
from ctr.experiments.evidence_bootstrap import interval, key_seed, resample_examples, template_outcomes
from ctr.experiments.evidence_report import fmt_diff
from ctr.fileio import read_json, read_jsonl, write_json
from ctr.inference.evaluate import EvalConfig, run_eval
from ctr.provenance import provenance
from ctr.train.time_budget import BUDGET_FILE
from ctr.train.trainer import train

PROXY = dict(stage=1, preset="cpu-small", drop_single_answer=True, max_source_len=32,
             max_target_len=16, steps=600, batch_size=8, micro_batch_size=8, log_every=1,
             save_every=100, keep_checkpoints=1)
# The recipes compared; each is `ctr train` options on top of PROXY.
RECIPES: dict[str, dict[str, Any]] = {
    # the authors' module (random projections, uniform codebook, VQ-only codebook updates)
    "paper": dict(codebook_recipe="paper"),
    # code values start as token embeddings and are the prompt; the LM trains them directly
    "prompt": dict(codebook_recipe="prompt"),
    # every task quantised each step, EMA codebook, revival from every task, LM-trained value
    # offsets (the default before the grouped start)
    "stable": dict(codebook_recipe="stable"),
    # one remedy at a time, for the comparison at equal steps
    "prompt_all_tasks": dict(codebook_recipe="prompt", quantize_all_tasks=True, dead_code_threshold=1.0),
    "stable_without_offsets": dict(codebook_recipe="stable", value_offsets=False),
    "prompt_warmup_kmeans": dict(codebook_recipe="prompt", codebook_warmup_steps=100),
    "prompt_rotation": dict(codebook_recipe="prompt", rotation_trick=True),
    "prompt_entropy": dict(codebook_recipe="prompt", code_entropy_weight=0.1),
    # stable, with tasks that look alike (their descriptions) starting on shared values, the
    # task embeddings at the full lr
    "stable_grouped": dict(codebook_recipe="stable", encoder_init="grouped", task_embedding_lr_scale=1.0),
    # the grouped start with the task embeddings (the encoder's input) at 1% of the lr, so
    # that tasks stay near the values their descriptions shared
    "stable_grouped_held": dict(codebook_recipe="stable", encoder_init="grouped", task_embedding_lr_scale=0.01),
    # between the two: the task embeddings at 10% of the lr, so that tasks can still move
    # away from their grouped start, ten times slower (what --codebook-recipe grouped trains,
    # the default of the presets meant for long runs)
    "stable_grouped_slow": dict(codebook_recipe="stable", encoder_init="grouped", task_embedding_lr_scale=0.1),
    # a harder proxy, toward the depth of the GPU run's collapse: the lr doubled and held flat
    # (under the cosine schedule the collapse stops once the lr has decayed below ~0.4x)
    "prompt_lr2x_flat": dict(codebook_recipe="prompt", lr=2e-2, min_lr_ratio=1.0),
    "stable_lr2x_flat": dict(codebook_recipe="stable", lr=2e-2, min_lr_ratio=1.0),
    "stable_grouped_slow_lr2x_flat": dict(codebook_recipe="stable", encoder_init="grouped",
                                          task_embedding_lr_scale=0.1, lr=2e-2, min_lr_ratio=1.0),
}
PROBE_STEPS = (10, 100, 200, 300, 400, 500, 600)
# SST-2 validation whole (872), TREC and AG News at most 1000 examples; the backbone and the
# chosen codes are scored on the same first two templates of each task. A 2-core CPU scores
# about 10 sequences a second, so the ~250 candidate codes are compared on 8 unlabelled
# inputs under one template (2,000 requests a task)
NEAR = dict(suite="near", max_examples=1000, batch_size=64)
EVAL_TEMPLATES = 2
ZERO_LABEL = dict(n_inputs=8, max_templates=1, eval_max_templates=EVAL_TEMPLATES)
N_BOOT = 2000  # bootstrap replicates of a zero-label difference from the backbone
KEPT = ("metrics.jsonl", TRAIN_CONFIG_FILE, RESOLVED_CONFIG_FILE, "code_table.json", HEALTH_FILE, BUDGET_FILE)


def run_dir(runs: Path, recipe: str, seed: int) -> Path:
    return Path(runs) / recipe / f"seed{seed}"


def train_run(runs: Path, recipe: str, seed: int, data_dir: str | None = None) -> Path:
    """Train one proxy run (kept if its final/ exists, continued from its last checkpoint
    if it was cut); returns the run folder."""
    out = run_dir(runs, recipe, seed)
    if not (out / "final").exists():
        train(TrainConfig.from_flags(output_dir=str(out), seed=seed, data_dir=data_dir, resume=True,
                                     **{**PROXY, **RECIPES[recipe]}), stop_after=None)
    return out


def near_folder(tasks: list[str] | None = None, selection_seed: int = 0) -> str:
    """The folder of a run that holds one zero-label scoring: `near` for the whole suite,
    `near_TASK` for some tasks, `_selS` for another Code Ensemble selection (seed S draws
    other unlabelled inputs, and AG News's 1000 evaluation examples; SST-2 and TREC are
    scored whole at every seed)."""
    return "near" + "".join(f"_{t}" for t in tasks or []) + (f"_sel{selection_seed}" if selection_seed else "")


def score_near(runs: Path, recipes: list[str], seeds: list[int], data_dir: str | None = None,
               tasks: list[str] | None = None, selection_seeds: tuple[int, ...] = (0,)) -> None:
    """Zero-label on the near suite (or its `tasks`) for the given finished runs, once per
    selection seed, and the backbone once on the whole suite."""
    if not (runs / "backbone" / "results.json").exists():
        run_eval(EvalConfig(model="smollm2", output_dir=str(runs / "backbone"), data_dir=data_dir,
                            max_templates=EVAL_TEMPLATES, **NEAR))
    for folder in (run_dir(runs, r, s) for r in recipes for s in seeds):
        for selection_seed in selection_seeds:
            out = folder / near_folder(tasks, selection_seed)
            if (folder / "final").exists() and not (out / "results.json").exists():
                run_zero_label(ZeroLabelConfig(checkpoint=str(folder), output_dir=str(out), data_dir=data_dir,
                                               tasks=list(tasks or []), seed=selection_seed, **NEAR,
                                               **ZERO_LABEL))


# ---- the table --------------------------------------------------------------------------
def run_summary(folder: Path, backbone: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the table reads from one run folder."""
    records = read_jsonl(folder / "metrics.jsonl")
    steps = records[-1]["step"]
    tail = [r["lm_loss"] for r in records if r["step"] > 0.9 * steps]
    by_step = {r["step"]: r for r in records}
    trajectory = {s: {"perplexity": round(statistics.mean(by_step[s]["code_perplexity"]), 2),
                      "distinct_values": by_step[s]["distinct_values"],
                      "distinct_codes": by_step[s].get("distinct_codes"),
                      "largest_value_share": by_step[s].get("largest_value_share"),
                      "type_gap": by_step[s].get("type_gap")}
                  for s in PROBE_STEPS if s in by_step}
    out = {"steps": steps, "lm_loss_last10": round(statistics.mean(tail), 4), "trajectory": trajectory,
           "health": read_json(folder / HEALTH_FILE) if (folder / HEALTH_FILE).exists() else None}
    near = near_scores(folder, backbone)
    if near:
        out["near"] = near
    return out


def near_scores(folder: Path, backbone: dict[str, Any] | None) -> dict[str, Any]:
    """{task: ...} of every zero-label scoring in the run's near* folders: the median over
    templates of each selection seed, and for the lowest seed ("median", "code") its
    difference from the backbone with a 95% bootstrap interval over the evaluation examples,
    paired (both drawn alike per example index); the selection's own variation is not in it."""
    scored: dict[str, dict[int, tuple[dict[str, Any], Path]]] = {}  # task -> seed -> (record, file)
    for path in sorted(folder.glob("near*/results.json")):
        res = read_json(path)
        seed = int(res["config"].get("seed") or 0)
        for task, rec in res["tasks"].items():
            if seed in scored.setdefault(task, {}):
                raise ValueError(f"{path}: {task} at selection seed {seed} is scored twice in {folder}")
            scored[task][seed] = (rec, path)
    out: dict[str, Any] = {}
    for task, by_seed in scored.items():
        seed = min(by_seed)
        rec, path = by_seed[seed]
        cell = out[task] = {"selections": {str(k): by_seed[k][0]["median"] for k in sorted(by_seed)},
                            "median": rec["median"], "code": rec.get("code"), "selection_seed": seed}
        if backbone and task in backbone["tasks"]:
            cell["vs_backbone"] = paired_difference(rec, backbone["tasks"][task], task, str(path))
    return out


def paired_difference(rec: dict[str, Any], base: dict[str, Any], task: str, where: str) -> dict[str, Any] | None:
    """The run's median minus the backbone's, with its interval (the evidence table's shape)."""
    model, bare = template_outcomes(rec, where), template_outcomes(base, f"backbone results ({task})")
    if model is None or bare is None:
        return None
    draws = key_seed(0, "codebook_proxy", task)
    lo, hi = interval(resample_examples(model, draws, N_BOOT) - resample_examples(bare, draws, N_BOOT))
    return {"diff": round(rec["median"] - base["median"], 2), "ci_low": round(lo, 2), "ci_high": round(hi, 2)}


def compile_table(runs: Path) -> dict[str, Any]:
    runs = Path(runs)
    table: dict[str, Any] = {"recipes": {}, "goals": GOALS, "proxy": PROXY}
    backbone = read_json(runs / "backbone" / "results.json") if (runs / "backbone" / "results.json").exists() else None
    for recipe_dir in sorted(p for p in runs.iterdir() if p.is_dir() and p.name in RECIPES):
        seeds = {f.name: run_summary(f, backbone) for f in sorted(recipe_dir.glob("seed*"))
                 if (f / "metrics.jsonl").exists()}
        if seeds:
            table["recipes"][recipe_dir.name] = {"options": RECIPES[recipe_dir.name], "seeds": seeds}
    if backbone:
        table["backbone"] = {t: v["median"] for t, v in backbone["tasks"].items()}
    return table


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _fmt(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown(table: dict[str, Any]) -> str:
    lines = ["## Trajectory (mean over seeds)", "",
             "| recipe | step | mean perplexity | values in use | distinct codes | largest value's share | type gap |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rec in table["recipes"].items():
        runs = list(rec["seeds"].values())
        for s in PROBE_STEPS:
            cells = [r["trajectory"].get(s) for r in runs if s in r["trajectory"]]
            if not cells:
                continue
            m = {k: _mean([c[k] for c in cells]) for k in cells[0]}
            lines.append(f"| {name} | {s} | {_fmt(m['perplexity'], 1)} | {_fmt(m['distinct_values'], 0)} | "
                         f"{_fmt(m['distinct_codes'], 0)} | {_fmt(m['largest_value_share'], 3)} | "
                         f"{_fmt(m['type_gap'], 3)} |")
    g = table["goals"]
    lines += ["", "## Final codebook health and training loss (each seed)", "",
              f"Goals: distinct codes >= {g['distinct_share']:.0%} of tasks, every position >= "
              f"{g['min_values']} values with perplexity >= {g['min_perplexity']:g}, no value over "
              f"{g['max_value_share']:.0%} of the table, type gap >= {g['type_gap']:g}.", "",
              "| recipe | seed | distinct codes | fewest values at a position | lowest perplexity | "
              "largest value's share | type gap | LM loss, last 10% of steps |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, rec in table["recipes"].items():
        for seed, r in rec["seeds"].items():
            h = r["health"]
            if h is None:
                lines.append(f"| {name} | {seed} | (unfinished) | | | | | {r['lm_loss_last10']:.4f} |")
                continue
            lines.append(f"| {name} | {seed} | {h['distinct_codes']} / {h['tasks']} | {min(h['values_in_use'])} | "
                         f"{min(h['perplexity']):.1f} | {h['largest_value_share']:.3f} | "
                         f"{_fmt(h['type_gap'], 3)} | {r['lm_loss_last10']:.4f} |")
    return "\n".join(lines + near_markdown(table))


def near_markdown(table: dict[str, Any]) -> list[str]:
    """The zero-label tables: one selection per run against the backbone, then every run
    scored at several selection seeds."""
    scored = [(f"{name} {seed}", r["near"]) for name, rec in table["recipes"].items()
              for seed, r in rec["seeds"].items() if "near" in r]
    if not scored:
        return []
    tasks = list(table.get("backbone", {})) or ["glue_sst2", "trec", "ag_news"]
    lines = ["", "## Near suite, zero-label (median accuracy over templates)", "",
             "One Code Ensemble selection per run (the lowest selection seed scored); in brackets its "
             "difference from the backbone and that difference's 95% bootstrap interval over the "
             "evaluation examples, paired. The selection's own variation is not in the interval.", "",
             "| model | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    if "backbone" in table:
        lines.append("| backbone | " + " | ".join(f"{table['backbone'][t]:.1f}" for t in tasks) + " |")

    def cell(c: dict[str, Any] | None) -> str:
        if not c:
            return "-"
        return f"{c['median']:.1f}" + (f" ({fmt_diff(c['vs_backbone'])})" if c.get("vs_backbone") else "")
    lines += [f"| {model} | " + " | ".join(cell(near.get(t)) for t in tasks) + " |" for model, near in scored]
    several = [(model, t, near[t]["selections"]) for model, near in scored for t in tasks
               if len(near.get(t, {}).get("selections", {})) > 1]
    if several:
        lines += ["", "## Zero-label over several selections", "",
                  "The same run, Code Ensemble selecting from other unlabelled inputs (selection seed S).", "",
                  "| model | task | selection seed: accuracy | mean | lowest | backbone |",
                  "|---|---|---|---:|---:|---:|"]
        for model, t, sel in several:
            accs = [sel[k] for k in sorted(sel, key=int)]
            lines.append(f"| {model} | {t} | " + ", ".join(f"{k}: {sel[k]:.1f}" for k in sorted(sel, key=int)) +
                         f" | {statistics.mean(accs):.1f} | {min(accs):.1f} | "
                         f"{_fmt(table.get('backbone', {}).get(t), 1)} |")
    return lines


def archive(runs: Path, dest: Path) -> None:
    """The files the table is built from (no weights), under DEST/runs/."""
    for folder in sorted(Path(runs).glob("*/seed*")):
        target = dest / "runs" / folder.parent.name / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (folder / name).exists():
                shutil.copy2(folder / name, target / name)
        for near in (p.parent for p in sorted(folder.glob("near*/results.json"))):
            (target / near.name).mkdir(exist_ok=True)
            for name in ("results.json", "results.md", "zero_label.json", "codes.json"):
                if (near / name).exists():
                    shutil.copy2(near / name, target / near.name / name)
    if (Path(runs) / "backbone" / "results.json").exists():
        (dest / "runs" / "backbone").mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(runs) / "backbone" / "results.json", dest / "runs" / "backbone" / "results.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctr.experiments.codebook_proxy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--runs", default="runs/codebook_proxy", help="run folders (train, then read)")
    p.add_argument("--out", default=None, help="write table.json, table.md and the archived inputs here")
    p.add_argument("--near", action="store_true", help="also score zero-label on the near suite")
    p.add_argument("--near-tasks", nargs="*", default=None,
                   help="zero-label on these near-suite tasks only (TREC's fine-grained templates "
                        "cost about 40 minutes of selection per model on a 2-core CPU)")
    p.add_argument("--selection-seeds", nargs="*", type=int, default=[0],
                   help="score zero-label once per Code Ensemble selection seed (each draws other "
                        "unlabelled inputs), into NEAR_FOLDER_selS")
    p.add_argument("--compile-only", action="store_true", help="read the runs, train nothing")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    runs = Path(args.runs)
    if not args.compile_only:
        for recipe in args.recipes:
            for seed in args.seeds:
                train_run(runs, recipe, seed, args.data_dir)
        if args.near:
            score_near(runs, args.recipes, args.seeds, args.data_dir, args.near_tasks,
                       tuple(args.selection_seeds))
    table = compile_table(runs)
    text = markdown(table)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if runs.resolve() != (out / "runs").resolve():  # recompiling an archive in place
            archive(runs, out)
        write_json(out / "table.json", {**table, "provenance": provenance()})
        (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
