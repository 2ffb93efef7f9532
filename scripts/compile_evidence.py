"""Compile the evidence table of scripts/evidence_smollm2.sh ("Make the codes matter", item 3)
from the JSON the ctr commands wrote (never from their printed lines) into
results/evidence/cpu/evidence.md + evidence.json.

    python scripts/compile_evidence.py [RUNS] [--out DIR] [--n-boot N] [--boot-seed S]
                                       [--coupling comonotone|independent]

RUNS (default runs_evidence) is laid out as the script writes it:
    backbone/TASK[/seedS]/results.json                  ctr eval of the bare backbone
    seedS/PAIR/{s1,s2,mt}/                               training runs (PAIR: main, lodo)
    seedS/PAIR/TASK/mt/results.json                      ctr eval of the multi-task baseline
    seedS/PAIR/TASK/zl_s1|zl_s2/{results,zero_label}.json  ctr zero-label on stage 1 / stage 2
    seedS/PAIR/TASK/zl_free/{results,zero_label}.json    ctr zero-label on free per-task prompts (the
                                                         ceiling of stage 1, scripts/free_prompts_to_ctr.py)
    seedS/PAIR/TASK/fs/results.json                      ctr few-shot: runs bitwise, discrete, prompt_tuning
    MODE, timings.tsv                                    written by the script

Statistic of a cell (column x task): accuracy per template, median over templates per seed,
mean over seeds. Its bootstrap interval over examples is computed one of two ways, per run
(one column at one seed), and every cell and difference says which in its "bootstrap" field:

* "examples (per-example outcomes)": `ctr eval` stores, per template, the index of every
  scored example and whether it was right ("indices", "correct"). A replicate draws examples:
  every example index of the (seed, task) is taken a Poisson(1) number of times (the Poisson
  bootstrap), and every template is scored on that same multiset (accuracy = weighted share of
  its right examples), so templates are as correlated as the data make them. The draw of an
  example depends only on (--boot-seed, pair, task, seed, example index), never on the column:
  two columns that scored the same examples at a seed see the same draw in every replicate, so
  a difference of their replicates is paired over examples ("paired examples"; where they
  scored partly different examples, e.g. selection examples kept out, it is paired on the
  shared ones and the rest are drawn independently).
* "binomial (no per-example outcomes)": results.json written before those fields store per
  template only n and the accuracy (k correct of n), so each template's 0/1 vector of k ones and
  n - k zeros is resampled (= Binomial(n, k/n) / n). Templates of one run are resampled jointly
  under a comonotone coupling (the same uniforms for every template: the most correlated
  templates can be, which widens the interval of their median; `--coupling independent` draws
  each template on its own). Columns are resampled independently, so a difference involving
  such a run is unpaired over examples (wider than the paired one the same examples allow).

Seeds are resampled independently either way. Beside it, the difference is also bootstrapped
over (seed, template) pairs with ctr.analysis.stats.paired_effect: whether it holds across
prompts and seeds.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ctr.analysis.stats import paired_effect
from ctr.provenance import provenance

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
TRAIN_DIRS = ("s1", "s2", "mt", "free", "free_s1")  # free: free prompts; free_s1: them as a CTR folder
PAIR_TITLES = {"main": "main", "lodo": "leave-one-dataset-out"}
ZERO_LABEL = {"zl_s1": "s1", "zl_s2": "s2", "zl_free": "free prompts"}  # column: short name
CEILING = {"free_minus_backbone": ("zl_free", "backbone"), "s1_minus_free": ("zl_s1", "zl_free")}
LEVEL = 0.95
EXAMPLES = "examples (per-example outcomes)"  # how a run was bootstrapped: see the docstring
BINOMIAL = "binomial (no per-example outcomes)"
PAIRED = "paired examples"


def load(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# ---- reading the runs --------------------------------------------------------------------------
def template_counts(rec: dict[str, Any], where: str) -> dict[str, tuple[int, int]]:
    """{template: (correct, n)} of one task record of a results.json, recovered from the stored
    accuracy (a percentage rounded to 2 decimals: exact for n < 10,000)."""
    out = {}
    for name, t in rec["templates"].items():
        n = int(t.get("n") or 0)
        if not n:
            continue
        k = round(t["accuracy"] * n / 100)
        if abs(100 * k / n - t["accuracy"]) > 0.0051:
            raise ValueError(f"{where}: template {name!r}: accuracy {t['accuracy']} is not k/n for n={n}")
        out[name] = (k, n)
    if not out:
        raise ValueError(f"{where}: no template with examples")
    return out


def template_outcomes(rec: dict[str, Any], where: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{template: (example indices, 0/1 outcomes)} of one task record, checked against n and the
    stored accuracy; None where a scored template lacks them (written before `ctr eval` stored them)."""
    scored = {name: t for name, t in rec["templates"].items() if int(t.get("n") or 0)}
    if not scored or not all("indices" in t and "correct" in t for t in scored.values()):
        return None
    out = {}
    for name, t in scored.items():
        idx, bits, n = t["indices"], t["correct"], int(t["n"])
        if not len(idx) == len(bits) == n or set(bits) - set("01") or len(set(idx)) != n:
            raise ValueError(f"{where}: template {name!r}: {len(bits)} outcomes ('0'/'1') for "
                             f"{len(idx)} indices ({len(set(idx))} distinct), n={n}")
        k = bits.count("1")
        if abs(100 * k / n - t["accuracy"]) > 0.0051:
            raise ValueError(f"{where}: template {name!r}: {k} of {n} outcomes are right, "
                             f"not the stored accuracy {t['accuracy']}")
        out[name] = (np.asarray(idx, dtype=np.int64), np.frombuffer(bits.encode(), np.uint8) - ord("0"))
    return out


def median_of(counts: dict[str, tuple[int, int]]) -> float:
    return float(statistics.median(100 * k / n for k, n in counts.values()))


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


# ---- bootstrap ---------------------------------------------------------------------------------
def resample_run(counts: dict[str, tuple[int, int]], n_boot: int, rng: np.random.Generator,
                 coupling: str) -> np.ndarray:
    """[n_boot] medians over templates (%) of one run, each template's 0/1 vector resampled."""
    n_max = max(n for _, n in counts.values())
    shared = rng.random((n_boot, n_max)) if coupling == "comonotone" else None
    accs = []
    for k, n in counts.values():
        u = shared[:, :n] if shared is not None else rng.random((n_boot, n))
        accs.append(100 * (u < k / n).mean(1))  # resampled share of the k ones
    return np.median(np.stack(accs), axis=0)


def cell_replicates(per_seed: list[dict[str, tuple[int, int]]], n_boot: int, seed: int,
                    coupling: str) -> np.ndarray:
    """[n_boot] replicates of the cell statistic: mean over seeds of the median over templates."""
    rng = np.random.default_rng(seed)
    return np.mean([resample_run(c, n_boot, rng, coupling) for c in per_seed], axis=0)


@functools.lru_cache(maxsize=1 << 16)
def example_draw(base: int, index: int, n_boot: int) -> np.ndarray:
    """[n_boot] times example `index` is drawn in each replicate: Poisson(1), from (base, index) only."""
    return np.random.default_rng([base, index]).poisson(1.0, n_boot).astype(np.uint8)


def resample_examples(outcomes: dict[str, tuple[np.ndarray, np.ndarray]], base: int,
                      n_boot: int) -> np.ndarray:
    """[n_boot] medians over templates (%) of one run, every template scored on the same drawn
    examples (accuracy: the drawn share of its right ones; a template none of whose examples is
    drawn, possible only for a handful of examples, keeps its observed accuracy)."""
    universe = np.unique(np.concatenate([idx for idx, _ in outcomes.values()]))
    w = np.stack([example_draw(base, int(i), n_boot) for i in universe], axis=1).astype(np.int64)
    accs = []
    for idx, bits in outcomes.values():
        wt = w[:, np.searchsorted(universe, idx)]
        total, hits = wt.sum(1), wt @ bits
        accs.append(100 * np.where(total > 0, hits / np.maximum(total, 1), bits.mean()))
    return np.median(np.stack(accs), axis=0)


def run_replicates(per_seed: list[dict[str, Any]], pair: str, task: str, col: str, args) -> np.ndarray:
    """[n_boot] replicates of a cell: per run, examples drawn from a seed of (boot seed, pair, task,
    seed) - not the column, so two columns' replicates share their draws - where outcomes are
    stored, else the binomial bootstrap (the column's own stream, as before); mean over seeds."""
    rng = np.random.default_rng(key_seed(args.boot_seed, pair, task, col))
    reps = [resample_examples(p["_outcomes"], key_seed(args.boot_seed, pair, task, f"seed{p['seed']}"),
                              args.n_boot) if p["_outcomes"] else
            resample_run(p["counts"], args.n_boot, rng, args.coupling) for p in per_seed]
    return np.mean(reps, axis=0)


def interval(reps: np.ndarray) -> tuple[float, float]:
    alpha = (1 - LEVEL) / 2
    return float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))


def key_seed(boot_seed: int, *parts: str) -> int:
    """A stable seed per cell, so a cell's interval does not depend on which other cells exist."""
    return zlib.crc32("/".join((str(boot_seed),) + parts).encode())


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


def training_info(runs: Path, seeds: list[int]) -> list[dict[str, Any]]:
    out = []
    for s in seeds:
        order = {p: i for i, p in enumerate(PAIR_TITLES)}
        for pair_dir in sorted((p for p in (runs / f"seed{s}").iterdir() if p.is_dir()),
                               key=lambda p: (order.get(p.name, len(order)), p.name)):
            for name in TRAIN_DIRS:
                d = pair_dir / name
                if not (d / "train_config.json").exists():
                    continue
                cfg = load(d / "train_config.json")
                metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()
                           if x.strip()] if (d / "metrics.jsonl").exists() else []
                last = metrics[-10:]
                out.append({"seed": s, "pair": pair_dir.name, "run": name, "model": cfg.get("model"),
                            "stage": cfg.get("stage"),
                            "no_codes": cfg.get("no_codes"), "steps": cfg.get("steps"),
                            "batch_size": cfg.get("batch_size"), "lr": cfg.get("lr"),
                            "tasks": cfg.get("tasks") or [], "train_seed": cfg.get("seed"),
                            "finished": (d / "final").is_dir(),
                            "lm_loss_last10": float(np.mean([m["lm_loss"] for m in last])) if last else None,
                            **codebook_health(metrics),
                            "train_seconds": float(sum(m.get("step_time", 0) for m in metrics))})
    return out


def codebook_health(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The codebook-stability figures of issue 12 from a CTR run's metrics.jsonl: VQ loss at the
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


# ---- the report ----------------------------------------------------------------------------------
def fmt_cell(c: dict[str, Any] | None, n_seeds: int) -> str:
    if c is None:
        return "-"
    mark = "" if len(c["seeds"]) == n_seeds or c["shared"] else f" ({len(c['seeds'])} of {n_seeds} seeds)"
    return f"{c['value']:.1f} [{c['ci_low']:.1f}, {c['ci_high']:.1f}]{mark}"


def fmt_diff(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    n = f" ({d['pairs']} pairs)" if "pairs" in d else ""
    return f"{d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]{n}"


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
               "diffs": {zl: difference(*both, args) for zl in ("zl_s1", "zl_s2") if cells[zl] and cells["mt"]
                         and (both := on_common_seeds(runs, pair, task, (zl, "mt"), cells, args))},
               "ceiling": {name: difference(*both, args, than=f"the {dict(COLUMNS)[b]}")
                           for name, (a, b) in CEILING.items() if cells[a] and cells[b]
                           and (both := on_common_seeds(runs, pair, task, (a, b), cells, args))},
               "agreement": {zl: agreement(runs, seeds, pair, task, zl) for zl in ZERO_LABEL},
               "few_shot": few_shot_info(runs, seeds, pair, task)}
        rows.append(row)
    pooled = {}
    for zl in ("zl_s1", "zl_s2"):
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


def bootstrap_note(ev: dict[str, Any]) -> str:
    """Which bootstrap the cells used, for the reader of evidence.md."""
    methods = Counter(c["bootstrap"] for r in ev["rows"] for c in r["cells"].values() if c)
    parts = []
    if methods[EXAMPLES]:
        parts.append(f"{methods[EXAMPLES]} of {sum(methods.values())} cells resample examples (their "
                     "results.json store each example's outcome): one draw of examples per (seed, task), "
                     "shared by every template and every column, so a difference between two columns is "
                     "paired over the examples both scored.")
    if methods[BINOMIAL]:
        parts.append(f"{methods[BINOMIAL]} of {sum(methods.values())} cells come from results.json that store "
                     "per template only k correct of n: each template's 0/1 vector is resampled "
                     f"(binomial; {ev['coupling']} coupling of templates) and columns independently, so a "
                     "difference involving one is unpaired over examples.")
    mixed = sum(n for m, n in methods.items() if m not in (EXAMPLES, BINOMIAL))
    if mixed:
        parts.append(f"{mixed} cells mix the two over seeds (see `evidence.json`).")
    return " ".join(parts)


def markdown(ev: dict[str, Any]) -> str:
    n_seeds = len(ev["seeds"])
    cols = [c for c, _ in COLUMNS if any(r["cells"][c] for r in ev["rows"])]
    hw = ev["hardware"]
    where = hw.get("gpu") or f"CPU ({hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores, " \
        f"{hw.get('threads', '?')} torch thread(s), torch {hw.get('torch', '?')})"
    lines = ["# Evidence: do the codes matter?", "",
             f"Backbone `{ev['backbone']}`; {where}.", ""]
    if ev["mode"] == "quick":
        lines += ["**QUICK run (`--quick`): a pipeline check on a few examples, not evidence.**", ""]
    lines += [f"Seeds {', '.join(map(str, ev['seeds']))}. Each cell: accuracy (%), median over templates per "
              f"seed, mean over seeds, and its bootstrap {LEVEL:.0%} interval over examples ({ev['n_boot']} "
              f"replicates; see `scripts/compile_evidence.py`). {bootstrap_note(ev)} Built by "
              f"`bash scripts/evidence_smollm2.sh` and `python scripts/compile_evidence.py {ev['runs']}`.", "",
              "| mixture | task | role | " + " | ".join(dict(COLUMNS)[c] for c in cols) + " |",
              "|---|---|---|" + "---|" * len(cols)]
    for r in ev["rows"]:
        role = "held-in (dataset trained on)" if r["held_in"] else "held-out"
        lines.append(f"| {PAIR_TITLES.get(r['pair'], r['pair'])} ({r['training_tasks']} tasks) | {r['task']} | "
                     f"{role} | " + " | ".join(fmt_cell(r["cells"][c], n_seeds) for c in cols) + " |")
    lines += ["", "## The paper's claim: CTR zero-label >= the multi-task prompted baseline", "",
              "Difference in points (CTR zero-label minus baseline), with its interval over examples "
              "(paired over examples where both columns stored per-example outcomes: the bootstrap "
              "column says) and over (seed, template) pairs (`paired_effect`, mean over templates).", "",
              "| mixture | task | stage | difference [95% over examples] | verdict | bootstrap over examples | "
              "difference [95% over seeds x templates] | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in ev["rows"]:
        for zl, d in r["diffs"].items():
            p = d.get("paired_templates")
            only = "" if len(d["seeds"]) == n_seeds else f" (seed {', '.join(map(str, d['seeds']))} only)"
            lines.append(f"| {r['pair']} | {r['task']}{' (held-in)' if r['held_in'] else ''} | "
                         f"{ZERO_LABEL[zl]}{only} | {fmt_diff(d)} | {d['verdict']} | {d['bootstrap']} | {fmt_diff(p)} | "
                         f"{p['verdict'] if p else '-'} |")
    for zl, p in ev["pooled_zero_label_minus_baseline"].items():
        lines.append(f"| **pooled** | mean over {p['tasks']} held-out tasks | {ZERO_LABEL[zl]} | {fmt_diff(p)} | "
                     f"{p['verdict']} | {p['bootstrap']} | | |")
    lines += ["", "The claim (>=) is contradicted where an interval lies below 0 and shown where it lies "
              "above 0; where it includes 0, these data do not decide it.",
              ""]
    if any(r["ceiling"] for r in ev["rows"]):
        lines += ["## Stage 1 against its ceiling: free per-task prompts", "",
                  "A code's prompt cannot do better than a free prompt per training task (multi-task prompt "
                  "tuning of the frozen LM, same mixture and budget), scored by the same Code Ensemble. The "
                  "issue's goal for stage 1 is +10 points over the backbone, or, where the ceiling itself "
                  "transfers less, stage 1 within 2 points of the ceiling.", "",
                  "| mixture | task | difference | points [95% over examples] | verdict | "
                  "[95% over seeds x templates] |", "|---|---|---|---|---|---|"]
        for r in ev["rows"]:
            for name, d in r["ceiling"].items():
                a, b = (dict(COLUMNS)[c] for c in CEILING[name])
                lines.append(f"| {r['pair']} | {r['task']} | {a} - {b} | {fmt_diff(d)} | {d['verdict']} | "
                             f"{fmt_diff(d.get('paired_templates'))} |")
        lines.append("")
    lines += ["## Zero-label selection: do the training codes disagree?", "",
              "Mean agreement of the training codes with their majority vote on the selection inputs "
              "(1.0: every code gives the same answers, so selection cannot matter), and the code picked.", "",
              "| mixture | task | stage | mean agreement | picked (seed: training task, agreement) |",
              "|---|---|---|---|---|"]
    for r in ev["rows"]:
        for zl, a in r["agreement"].items():
            if a:
                picks = "; ".join(f"{x['seed']}: `{x['chosen_from']}` {x['chosen_agreement']:.3f}"
                                  for x in a["per_seed"])
                lines.append(f"| {r['pair']} | {r['task']} | {ZERO_LABEL[zl]} | {a['mean_agreement']:.3f} | {picks} |")
    lines += ["", "## Few-shot search", "",
              "| mixture | task | seed | checkpoint | start (best training code) | loss start -> search | "
              "code moved | chosen by |", "|---|---|---|---|---|---|---|---|"]
    for r in ev["rows"]:
        for f in r["few_shot"]:
            lines.append(f"| {r['pair']} | {r['task']} | {f['seed']} | `{f['checkpoint']}` | `{f['start_from']}` | "
                         f"{f['start_objective']:.2f} -> {f['search_objective']:.2f} | {f['moved']} | "
                         f"{f['chosen_by']} |")
    lines += ["", "## Per seed (median over templates; examples scored)", "",
              "| mixture | task | column | " + " | ".join(f"seed {s}" for s in ev["seeds"]) + " |",
              "|---|---|---|" + "---|" * n_seeds]
    for r in ev["rows"]:
        for c in cols:
            cell = r["cells"][c]
            if not cell:
                continue
            by = {p["seed"]: p for p in cell["per_seed"]}
            vals = [f"{by[s]['median']:.1f} (n={by[s]['examples']})" if s in by else
                    ("same file" if cell["shared"] else "-")
                    for s in ev["seeds"]]
            lines.append(f"| {r['pair']} | {r['task']} | {c} | " + " | ".join(vals) + " |")
    lines += ["", "## Training", "",
              "| seed | mixture | run | stage | tasks | steps x batch | lr | LM loss, last 10 steps | "
              "VQ loss first -> last | code values in use (last step) | training time (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in ev["training"]:
        kind = "multi-task baseline" if t["no_codes"] else f"CTR stage {t['stage']}"
        loss = "-" if t["lm_loss_last10"] is None else f"{t['lm_loss_last10']:.3f}"
        vq = "-" if t["vq_first"] is None else f"{t['vq_first']:.4f} -> {t['vq_last']:.4f}"
        lines.append(f"| {t['seed']} | {t['pair']} | {t['run']} ({kind}) | {t['stage']} | {len(t['tasks'])} | "
                     f"{t['steps']} x {t['batch_size']}{'' if t['finished'] else ' (unfinished)'} | "
                     f"{t['lr']} | {loss} | {vq} | {t['values_in_use'] if t['values_in_use'] is not None else '-'} | "
                     f"{t['train_seconds']:.0f} |")
    if ev["timings"]:
        lines += ["", f"Wall time of the steps run ({len(ev['timings'])} logged in `timings.tsv`): "
                  f"{ev['total_step_seconds'] / 3600:.2f} h."]
    prov = ev["provenance"]
    commits = sorted({str(v.get("commit"))[:10] for v in ev["inputs"].values()})
    lines += ["", f"Compiled {prov['time']} at commit {str(prov.get('commit'))[:10]} (dirty: {prov.get('dirty')}); "
              f"runs made at commit(s) {', '.join(commits) or '-'}; every input file and its provenance "
              "are listed in `evidence.json`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="?", default="runs_evidence")
    ap.add_argument("--out", default="results/evidence/cpu", help="where evidence.md/json go")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--coupling", choices=("comonotone", "independent"), default="comonotone",
                    help="templates of a run without per-example outcomes (the binomial bootstrap)")
    args = ap.parse_args(argv)
    ev = compile_evidence(Path(args.runs), args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.md").write_text(markdown(ev))
    (out / "evidence.json").write_text(json.dumps(strip(ev), indent=1) + "\n")
    print(f"wrote {out / 'evidence.md'} and {out / 'evidence.json'}")
    return ev


if __name__ == "__main__":
    main(sys.argv[1:])
