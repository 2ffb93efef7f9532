"""The evidence table (do the codes matter?) compiled from the JSON the ctr commands wrote
into a run folder of scripts/evidence_smollm2.sh (never from their printed lines): cells,
differences with bootstrap intervals (ctr.experiments.evidence_bootstrap), zero-label
agreement, few-shot starts, training figures. The report is ctr.experiments.evidence_report;
the command is scripts/compile_evidence.py (ctr.experiments.evidence_command).

RUNS (default runs_evidence) is laid out as the script writes it:
    backbone/TASK[/seedS]/results.json                  ctr eval of the bare backbone
    seedS/PAIR/{s1,s2,mt}/                               ctr train runs (PAIR: main, lodo)
    seedS/PAIR/free/                                     ctr free-prompts: free per-task prompts
    seedS/PAIR/TASK/mt/results.json                      ctr eval of the multi-task baseline
    seedS/PAIR/TASK/zl_s1|zl_s2/{results,zero_label}.json  ctr zero-label on stage 1 / stage 2
    seedS/PAIR/TASK/zl_free/{results,zero_label}.json    ctr zero-label on the free prompts (the
                                                         ceiling of stage 1)
    seedS/PAIR/TASK/fs/results.json                      ctr few-shot: runs bitwise, discrete, prompt_tuning
    MODE, timings.tsv                                    written by the script
Every training run is described by its train_config.json.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ctr.analysis.stats import paired_effect
from ctr.experiments.evidence_bootstrap import (BINOMIAL, EXAMPLES, LEVEL, PAIRED, interval, median_of,
                                                run_replicates, template_counts, template_outcomes)
from ctr.adapt.free_prompts import METHOD as FREE_PROMPTS
from ctr.config import read_run_config
from ctr.provenance import provenance
from ctr.train.time_budget import BUDGET_FILE

COLUMNS = [  # key, title
    ("backbone", "backbone"),
    ("mt", "multi-task prompted baseline"),
    ("zl_s1", "CTR stage-1 zero-label"),
    ("zl_free", "free-prompt ceiling, zero-label"),
    ("zl_s2", "CTR stage-2 zero-label"),
    ("bitwise", "CTR few-shot (Bitwise)"),
    ("discrete", "discrete only"),
    ("prompt_tuning", "prompt tuning"),
]
FEW_SHOT_RUNS = ("bitwise", "discrete", "prompt_tuning")
TRAIN_DIRS = ("s1", "s2", "mt", "free")  # free: `ctr free-prompts`
PAIR_TITLES = {"main": "main", "lodo": "leave-one-dataset-out"}
ZERO_LABEL = {"zl_s1": "s1", "zl_s2": "s2", "zl_free": "free prompts"}  # column: short name
CLAIM = {"zl_s1": ("zl_s1", "mt"), "zl_s2": ("zl_s2", "mt")}  # the paper's claim: CTR zero-label - baseline
CEILING = {"free_minus_backbone": ("zl_free", "backbone"), "s1_minus_free": ("zl_s1", "zl_free")}
# what training moved: each trained column minus the bare LM on the same examples
VS_BACKBONE = {"mt_minus_backbone": ("mt", "backbone"), "s1_minus_backbone": ("zl_s1", "backbone"),
               "s2_minus_backbone": ("zl_s2", "backbone")}


def load(path: Path) -> Any:
    return json.loads(Path(path).read_text())



def seeds_of(runs: Path) -> list[int]:
    return sorted(int(p.name[4:]) for p in runs.glob("seed*") if p.is_dir() and p.name[4:].isdigit())


def pairs_and_tasks(runs: Path, seeds: list[int]) -> list[tuple[str, str]]:
    """(pair, task) rows, in a stable order: main before lodo, tasks by name."""
    found = set()
    for s in seeds:
        for pair_dir in (runs / f"seed{s}").iterdir():
            if not pair_dir.is_dir():
                continue
            for task_dir in pair_dir.iterdir():
                if task_dir.is_dir() and task_dir.name not in TRAIN_DIRS:
                    found.add((pair_dir.name, task_dir.name))
    order = {p: i for i, p in enumerate(PAIR_TITLES)}
    return sorted(found, key=lambda pt: (order.get(pt[0], len(order)), pt[0], pt[1]))


def column_record(runs: Path, seed: int, pair: str, task: str, col: str
                  ) -> tuple[dict[str, Any], Path, bool] | None:
    """The task record of one column at one seed, the file it came from, and whether that file
    serves every seed (the backbone on a full set, scored once); None: not run."""
    if col == "backbone":
        for f, shared in ((runs / "backbone" / task / f"seed{seed}" / "results.json", False),
                          (runs / "backbone" / task / "results.json", True)):
            if f.exists():
                return load(f)["tasks"][task], f, shared
        return None
    base = runs / f"seed{seed}" / pair / task
    if col in FEW_SHOT_RUNS:
        f = base / "fs" / "results.json"
        if not f.exists():
            return None
        run = load(f)["runs"].get(col)
        return (run["tasks"][task], f, False) if run else None
    f = base / col / "results.json"
    return (load(f)["tasks"][task], f, False) if f.exists() else None



# ---- cells, differences, agreement ---------------------------------------------------------------
def read_run(runs: Path, f: Path, rec: dict[str, Any], task: str, seed: int) -> dict[str, Any]:
    """One run of a cell (a column at one seed): its counts, checked against the stored median,
    and its per-example outcomes where the file stores them."""
    counts = template_counts(rec, str(f))
    if rec.get("median") is not None and abs(median_of(counts) - rec["median"]) > 0.02:
        raise ValueError(f"{f}: {task}: stored median {rec['median']} is not the median of its "
                         f"templates ({median_of(counts):.2f})")
    outcomes = template_outcomes(rec, str(f))
    return {"seed": seed, "file": str(f.relative_to(runs)), "counts": counts,
            "median": median_of(counts), "stored_median": rec.get("median"),
            "examples": rec.get("examples"), "excluded": rec.get("excluded", 0),
            "bootstrap": EXAMPLES if outcomes else BINOMIAL, "_outcomes": outcomes}


def cell_method(per_seed: list[dict[str, Any]]) -> str:
    methods = {p["bootstrap"] for p in per_seed}
    if len(methods) == 1:
        return methods.pop()
    return "mixed: " + "; ".join(f"seed {p['seed']} {p['bootstrap']}" for p in per_seed)


def build_cell(runs: Path, seeds: list[int], pair: str, task: str, col: str, args) -> dict[str, Any] | None:
    per_seed, files, shared = [], [], False
    for s in seeds:
        got = column_record(runs, s, pair, task, col)
        if got is None:
            continue
        rec, f, shared = got
        if f in files:  # the backbone on a full set: one file serves every seed
            continue
        per_seed.append(read_run(runs, f, rec, task, s))
        files.append(f)
    if not per_seed:
        return None
    reps = run_replicates(per_seed, pair, task, col, args)
    lo, hi = interval(reps)
    return {"value": float(np.mean([p["median"] for p in per_seed])), "ci_low": lo, "ci_high": hi,
            "bootstrap": cell_method(per_seed),
            "seeds": [p["seed"] for p in per_seed], "shared": shared,  # one file for every seed
            "per_seed": per_seed, "_reps": reps}


def verdict(lo: float, hi: float, than: str = "the baseline") -> str:
    if lo > 0:
        return f"above {than} (interval above 0)"
    if hi < 0:
        return f"below {than} (interval below 0)"
    return "not resolved (interval includes 0)"


def scored_examples(run: dict[str, Any] | None) -> set[int]:
    """The example indices a run stored outcomes for (none: no per-example outcomes)."""
    if not run or not run["_outcomes"]:
        return set()
    return set(np.concatenate([idx for idx, _ in run["_outcomes"].values()]).tolist())


def pairing(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How a - b is paired over examples: an example both columns scored at the same seed is
    drawn the same number of times in both (run_replicates); any other is drawn independently."""
    b_runs = {p["seed"]: p for p in b["per_seed"]}
    shared = total = 0
    for p in a["per_seed"]:
        ea, eb = scored_examples(p), scored_examples(b_runs.get(p["seed"]))
        shared, total = shared + len(ea & eb), total + len(ea | eb)
    if shared and shared == total and a["bootstrap"] == b["bootstrap"] == EXAMPLES:
        return PAIRED
    if shared:
        return f"partly paired examples ({shared} of {total} scored by both at the same seed)"
    if BINOMIAL in a["bootstrap"] + b["bootstrap"]:
        return "unpaired: " + BINOMIAL
    return "unpaired examples (no example scored by both at the same seed)"


def on_common_seeds(runs: Path, pair: str, task: str, cols: tuple[str, str], cells: dict[str, Any],
                    args) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The two cells of a difference over the seeds both scored (a run still missing at one
    seed would otherwise compare a one-seed mean with a two-seed mean); None: no common seed."""
    a, b = (cells[c] for c in cols)
    common = [s for s in a["seeds"] if b["shared"] or s in b["seeds"]]
    if not common:
        return None
    if common == a["seeds"] and (b["shared"] or common == b["seeds"]):
        return a, b
    return build_cell(runs, common, pair, task, cols[0], args), build_cell(runs, common, pair, task, cols[1], args)


def difference(a: dict[str, Any], b: dict[str, Any], args, than: str = "the baseline") -> dict[str, Any]:
    """a - b over examples (replicates of both cells, paired where `pairing` says so) and paired
    over (seed, template); both cells hold the same seeds (`on_common_seeds`)."""
    reps = a["_reps"] - b["_reps"]
    lo, hi = interval(reps)
    out = {"diff": a["value"] - b["value"], "ci_low": lo, "ci_high": hi, "verdict": verdict(lo, hi, than),
           "bootstrap": pairing(a, b), "seeds": a["seeds"], "_reps": reps}
    b_by_seed = {p["seed"]: p["counts"] for p in b["per_seed"]}
    xa, xb = [], []
    for p in a["per_seed"]:
        other = b_by_seed.get(p["seed"])
        if other is None and b["shared"]:  # the backbone on a full set: one run for every seed
            other = b["per_seed"][0]["counts"]
        for name in sorted(set(p["counts"]) & set(other or {})):
            xa.append(100 * p["counts"][name][0] / p["counts"][name][1])
            xb.append(100 * other[name][0] / other[name][1])
    if xa:
        pe = paired_effect(xa, xb, args.n_boot, args.boot_seed)  # over (seed, template) pairs
        out["paired_templates"] = {"diff": pe["diff"], "ci_low": pe["ci_low"], "ci_high": pe["ci_high"],
                                   "pairs": pe["n"], "verdict": verdict(pe["ci_low"], pe["ci_high"], than)}
    return out


def differences(runs: Path, pair: str, task: str, cells: dict[str, Any], wanted: dict[str, tuple[str, str]],
                args, than: str | None = None) -> dict[str, Any]:
    """{name: a - b} for every (a, b) of `wanted` whose two cells exist, over the seeds both scored;
    the verdict names `than` (default: b's column title)."""
    out = {}
    for name, (a, b) in wanted.items():
        if cells[a] and cells[b] and (both := on_common_seeds(runs, pair, task, (a, b), cells, args)):
            out[name] = difference(*both, args, than=than or f"the {dict(COLUMNS)[b]}")
    return out


def agreement(runs: Path, seeds: list[int], pair: str, task: str, col: str) -> dict[str, Any] | None:
    """Mean agreement of the candidate (training) codes with their majority vote, from the ranked
    list of zero_label.json, and the code each seed picked."""
    rows = []
    for s in seeds:
        f = runs / f"seed{s}" / pair / task / col / "zero_label.json"
        if not f.exists():
            continue
        sel = load(f)["tasks"][task]
        ranked = sel["ranked"]
        rows.append({"seed": s, "mean_agreement": float(np.mean([r["agreement"] for r in ranked])),
                     "candidates": len(ranked), "chosen_agreement": sel["agreement"],
                     "chosen_from": sel["from_tasks"][0], "code": sel["code"],
                     "selection_source": sel.get("selection_source"), "inputs": sel.get("inputs")})
    if not rows:
        return None
    return {"mean_agreement": float(np.mean([r["mean_agreement"] for r in rows])), "per_seed": rows}


def few_shot_info(runs: Path, seeds: list[int], pair: str, task: str) -> list[dict[str, Any]]:
    out = []
    for s in seeds:
        f = runs / f"seed{s}" / pair / task / "fs" / "results.json"
        if not f.exists():
            continue
        res = load(f)
        a = res["adapted"][task]
        out.append({"seed": s, "checkpoint": res["config"]["checkpoint"], "shots": res["config"]["shots"],
                    "holdout": res["config"].get("holdout"), "start_from": a["start_tasks"][0],
                    "start_objective": a["start_objective"], "search_objective": a["search_objective"],
                    "chosen_by": a.get("chosen_by"), "moved": a["code"] != a["start_code"],
                    "sweeps": a["sweeps"], "codes_scored": a["codes_scored"]})
    return out


def training_kind(cfg: dict[str, Any]) -> tuple[str, int | None]:
    """What a train_config.json trained, and its stage: `ctr train` (stage 1 or 2, or the
    baseline without codes) or `ctr free-prompts` (LM frozen, as stage 1)."""
    if cfg.get("method") == FREE_PROMPTS:
        return "per-task prompts, the ceiling", 1
    if cfg.get("no_codes"):
        return "multi-task baseline", cfg.get("stage")
    return f"CTR stage {cfg.get('stage')}", cfg.get("stage")


def training_info(runs: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """A row per training run, from its train_config.json and metrics.jsonl."""
    out = []
    for s in seeds:
        order = {p: i for i, p in enumerate(PAIR_TITLES)}
        for pair_dir in sorted((p for p in (runs / f"seed{s}").iterdir() if p.is_dir()),
                               key=lambda p: (order.get(p.name, len(order)), p.name)):
            for name in TRAIN_DIRS:
                d = pair_dir / name
                cfg = read_run_config(d)
                if not cfg:
                    continue
                kind, stage = training_kind(cfg)
                row = {"model": cfg.get("model"), "stage": stage, "kind": kind,
                       "no_codes": cfg.get("no_codes"), "steps": steps_run(d, cfg),
                       "batch_size": cfg.get("batch_size"), "lr": cfg.get("lr"),
                       "tasks": cfg.get("tasks") or [], "train_seed": cfg.get("seed"),
                       "finished": (d / "final").is_dir()}
                metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()
                           if x.strip()] if (d / "metrics.jsonl").exists() else []
                last = metrics[-10:]
                out.append({"seed": s, "pair": pair_dir.name, "run": name, **row,
                            "lm_loss_last10": float(np.mean([m["lm_loss"] for m in last])) if last else None,
                            **codebook_health(metrics),
                            "train_seconds": float(sum(m.get("step_time", 0) for m in metrics))})
    return out


def steps_run(run: Path, cfg: dict[str, Any]) -> int | None:
    """The steps a run took: those --max-minutes decided (time_budget.json), else its config's."""
    budget = run / BUDGET_FILE
    return load(budget)["steps"] if budget.exists() else cfg.get("steps")


def codebook_health(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """How stable a CTR run's codebook stayed, from its metrics.jsonl: VQ loss at the
    first and last logged step and the distinct code values in use at the last (None: no codes)."""
    logged = [m for m in metrics if m.get("vq_loss") is not None and m.get("distinct_values") is not None]
    if not logged:
        return {"vq_first": None, "vq_last": None, "values_in_use": None}
    return {"vq_first": logged[0]["vq_loss"], "vq_last": logged[-1]["vq_loss"],
            "values_in_use": logged[-1]["distinct_values"]}


def held_in(task: str, training_tasks: list[str]) -> bool:
    """The task's dataset is in the training mixture (its T0 tasks are named DATASET_TEMPLATE)."""
    return any(t.startswith(task + "_") for t in training_tasks)


def timings(runs: Path) -> list[dict[str, Any]]:
    f = runs / "timings.tsv"
    if not f.exists():
        return []
    rows = []
    for line in f.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1].isdigit():
            rows.append({"step": parts[0], "seconds": int(parts[1]), "finished": parts[2] if len(parts) > 2 else None})
    return rows



def strip(x: Any) -> Any:
    """Drop the bootstrap replicates (keys starting with _) before writing JSON."""
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, list):
        return [strip(v) for v in x]
    if isinstance(x, tuple):
        return list(x)
    return x


def compile_evidence(runs: Path, args) -> dict[str, Any]:
    seeds = seeds_of(runs)
    if not seeds:
        raise SystemExit(f"{runs}: no seedN/ folder (run scripts/evidence_smollm2.sh first)")
    mode = (runs / "MODE").read_text().strip() if (runs / "MODE").exists() else "unknown"
    train = training_info(runs, seeds)
    rows = []
    for pair, task in pairs_and_tasks(runs, seeds):
        cells = {col: build_cell(runs, seeds, pair, task, col, args) for col, _ in COLUMNS}
        mix = next((t["tasks"] for t in train if t["pair"] == pair and t["run"] == "s1"), [])
        row = {"pair": pair, "task": task, "held_in": held_in(task, mix),
               "training_tasks": len(mix), "cells": cells,
               "diffs": differences(runs, pair, task, cells, CLAIM, args, than="the baseline"),
               "ceiling": differences(runs, pair, task, cells, CEILING, args),
               "vs_backbone": differences(runs, pair, task, cells, VS_BACKBONE, args),
               "agreement": {zl: agreement(runs, seeds, pair, task, zl) for zl in ZERO_LABEL},
               "few_shot": few_shot_info(runs, seeds, pair, task)}
        rows.append(row)
    pooled = {}
    for zl in CLAIM:
        ds = [r["diffs"][zl] for r in rows if zl in r["diffs"] and not r["held_in"]]
        if ds:
            reps = np.mean([d["_reps"] for d in ds], axis=0)
            lo, hi = interval(reps)
            pooled[zl] = {"diff": float(np.mean([d["diff"] for d in ds])), "ci_low": lo, "ci_high": hi,
                          "tasks": len(ds), "verdict": verdict(lo, hi),
                          "bootstrap": "; ".join(sorted({d["bootstrap"] for d in ds}))}
    steps = timings(runs)
    inputs, hardware = {}, {}
    for r in rows:
        for c in r["cells"].values():
            for p in (c or {}).get("per_seed", []):
                res = load(runs / p["file"])
                prov = res.get("provenance") or {}
                inputs[p["file"]] = {k: prov.get(k) for k in ("commit", "dirty", "time", "command")}
                hardware = hardware or prov.get("hardware") or res.get("hardware") or {}
    backbone = next((t["model"] for t in train if t.get("model")), None)
    return {"mode": mode, "runs": str(runs), "backbone": backbone, "hardware": hardware,
            "seeds": seeds, "n_boot": args.n_boot,
            "boot_seed": args.boot_seed, "coupling": args.coupling, "level": LEVEL,
            "columns": dict(COLUMNS), "rows": rows, "pooled_zero_label_minus_baseline": pooled,
            "training": train, "timings": steps,
            "total_step_seconds": sum(s["seconds"] for s in steps), "inputs": inputs,
            "provenance": provenance()}


