"""The bootstrap of the evidence table (ctr.experiments.evidence): a run's outcomes as stored
by `ctr eval`, and replicates of a cell statistic over examples.

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

import functools
import statistics
import zlib
from typing import Any

import numpy as np

LEVEL = 0.95
EXAMPLES = "examples (per-example outcomes)"  # how a run was bootstrapped: see the docstring
BINOMIAL = "binomial (no per-example outcomes)"
PAIRED = "paired examples"


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

