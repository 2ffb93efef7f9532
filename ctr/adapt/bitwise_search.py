"""Few-shot adaptation: Bitwise Search over code values.

Start from the training-task code with the lowest objective on the shots; then sweep
the positions in a seeded random order and, at each position, try every candidate value
(all K, or only those seen there in training codes); keep a change only if the objective
strictly drops; stop after a sweep without a change or `max_sweeps`.

The search is written against an objective over a *batch* of codes, so all values of a
position are scored together (`ShotObjective` packs codes x shots into shared forward
passes); called one code at a time it is the authors' loop (`ctr.bench.search` times the
two, tests/adapt/test_bitwise_search.py checks them against a loop written independently). The trajectory goes to JSONL after every position; a rerun with the same
settings replays it and continues where it stopped. Its start record holds a fingerprint
of everything the recorded steps depend on (start candidates, values per position,
seed, and the objective's own fingerprint); a rerun with other settings starts fresh and
replaces the file. `max_sweeps` is not part of it: the steps of sweep s do not depend on
it, so a rerun replays the sweeps below its own limit and continues past the recorded ones.

`select` (the gradient guide of `ctr.adapt.guided_search`) may narrow the values scored at
a position; its fingerprint joins the settings and its record (which values it scored)
joins each position's.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ctr.fileio import append_jsonl, read_jsonl, write_jsonl
from ctr.inference.scoring import RankScorer, ScoreRequest

Objective = Callable[[Sequence[Sequence[int]]], list[float]]  # codes -> objective (lower wins)
# (code, position, that position's other values) -> (values to score, fields for its record)
Select = Callable[[list[int], int, list[int]], tuple[list[int], dict]]


@dataclass
class SearchResult:
    code: list[int]
    objective: float
    start_code: list[int]
    start_objective: float
    sweeps: int
    evaluations: int
    trajectory: list[dict] = field(default_factory=list)


def position_order(seed: int, sweep: int, length: int) -> list[int]:
    return random.Random(seed * 1_000_003 + sweep).sample(range(length), length)


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def search_settings(starts: Sequence[Sequence[int]], values: Sequence[Sequence[int]], seed: int,
                    objective_id: str | None, select_id: str | None = None) -> dict[str, object]:
    """What a recorded trajectory depends on; a replay is valid only when all of it matches."""
    settings = {"starts": fingerprint([list(c) for c in starts]),
                "values": fingerprint([list(v) for v in values]), "seed": seed,
                "objective": objective_id}
    if select_id is not None:  # absent for the exhaustive search: older trajectories still replay
        settings["select"] = select_id
    return settings


def bitwise_search(objective: Objective, starts: Sequence[Sequence[int]],
                   values: Sequence[Sequence[int]], max_sweeps: int = 20, seed: int = 0,
                   trajectory_path: str | Path | None = None, chunk: int | None = None,
                   on_step: Callable[[dict], None] | None = None,
                   objective_id: str | None = None, select: Select | None = None) -> SearchResult:
    """Greedy coordinate search. `starts`: candidate start codes (the best one is taken);
    `values[p]`: the values tried at position p. `chunk` caps codes per objective call
    (default: all of a position's codes in one call; a `ShotObjective`'s scorer batches
    their rows by length within its own memory limit).

    `objective_id` identifies the objective for trajectory replay (default: the
    objective's `fingerprint()` when it has one, as `ShotObjective` does). A plain
    function without one is identified by nothing: its trajectory is replayed whenever
    starts, values and seed match, so pass an id when the function can change.

    `select(code, position, trial_values) -> (values to score, record fields)`: which of a
    position's other values are scored (default: all of them)."""
    if not starts:
        raise ValueError("bitwise_search: no start codes")
    L = len(values)
    t0 = time.time()
    if objective_id is None and callable(getattr(objective, "fingerprint", None)):
        objective_id = objective.fingerprint()
    select_id = select.fingerprint() if callable(getattr(select, "fingerprint", None)) else (
        None if select is None else "select")
    settings = search_settings(starts, values, seed, objective_id, select_id)
    log: list[dict] = []
    done: set[tuple[int, int]] = set()
    path = Path(trajectory_path) if trajectory_path else None
    if path and path.exists():  # resume: replay what was recorded
        log = read_jsonl(path, repair=True)
        recorded = log[0].get("settings", {}) if log and log[0].get("event") == "start" else None
        if log and recorded != settings:
            differ = [k for k in {**(recorded or {}), **settings}
                      if (recorded or {}).get(k) != settings.get(k)]
            print(f"[bitwise-search] {path}: recorded with other settings "
                  f"({', '.join(differ) if recorded else 'no fingerprint'} differ); "
                  "starting fresh and replacing it", flush=True)
            log = []
        log = log[:1] + [r for r in log[1:] if r["sweep"] < max_sweeps]  # sweeps beyond this run's limit
    evals = 0

    def score(codes: list[list[int]]) -> list[float]:
        nonlocal evals
        evals += len(codes)
        step = chunk or len(codes)
        return [v for i in range(0, len(codes), step) for v in objective(codes[i:i + step])]

    if log:
        start = log[0]
    else:
        start_scores = score([list(c) for c in starts])
        best = min(range(len(starts)), key=lambda i: (start_scores[i], i))
        start = {"event": "start", "code": list(starts[best]), "objective": start_scores[best],
                 "candidates": [list(c) for c in starts], "candidate_objectives": start_scores,
                 "settings": settings, "time": round(time.time() - t0, 3)}
        log = [start]
        if path:
            write_jsonl(path, [start])  # atomically replaces a stale trajectory
    code, obj = list(start["code"]), start["objective"]
    for rec in log[1:]:
        done.add((rec["sweep"], rec["step"]))
        code, obj = rec["code"], rec["objective"]
    sweeps = 0
    for sweep in range(max_sweeps):
        sweeps = sweep + 1
        changed = any(r.get("accepted") for r in log[1:] if r["sweep"] == sweep)
        for step, pos in enumerate(position_order(seed, sweep, L)):
            if (sweep, step) in done:
                continue
            trial_values = [v for v in values[pos] if v != code[pos]]
            picked: dict = {}
            if select is not None and trial_values:
                trial_values, picked = select(list(code), pos, trial_values)
            trials = [code[:pos] + [v] + code[pos + 1:] for v in trial_values]
            scores = score(trials) if trials else []
            rec = {"event": "position", "sweep": sweep, "step": step, "position": pos,
                   "tried": len(trials), "accepted": False, **picked}
            if scores:
                i = min(range(len(scores)), key=lambda j: (scores[j], j))
                rec["best_value"], rec["best_objective"] = trial_values[i], scores[i]
                if scores[i] < obj:  # strictly better only
                    code, obj = trials[i], scores[i]
                    rec["accepted"] = changed = True
            rec.update(code=list(code), objective=obj, time=round(time.time() - t0, 3))
            log.append(rec)
            if path:
                append_jsonl(path, rec)
            if on_step:
                on_step(rec)
        if not changed:
            break
    return SearchResult(list(code), obj, list(start["code"]), start["objective"], sweeps, evals, log)


@dataclass
class Shot:
    input_ids: list[int]
    choices: list[list[int]]
    label: int


class ShotObjective:
    """Objective of codes on labelled shots: summed target loss (-log p(gold choice)), or
    the error rate (ties broken by the loss). Codes x shots share forward passes."""

    def __init__(self, scorer: RankScorer, shots: list[Shot], kind: str = "loss"):
        if kind not in ("loss", "accuracy"):
            raise ValueError(f"objective must be 'loss' or 'accuracy', got {kind!r}")
        if not shots:  # every code would score 0 and the search would return its first start
            raise ValueError("ShotObjective: no shots to score codes on")
        self.scorer, self.shots, self.kind = scorer, shots, kind

    def fingerprint(self) -> str:
        """Hash of what the objective computes from: its kind and the shots' token ids and
        labels (the model is the caller's to add, as `few_shot.adapt_task` does)."""
        return fingerprint({"kind": self.kind,
                            "shots": [[s.input_ids, s.choices, s.label] for s in self.shots]})

    def __call__(self, codes: Sequence[Sequence[int]]) -> list[float]:
        if self.kind == "loss":  # only the gold choice's tokens are needed
            reqs = [ScoreRequest(s.input_ids, [s.choices[s.label]], list(c)) for c in codes for s in self.shots]
        else:
            reqs = [ScoreRequest(s.input_ids, s.choices, list(c)) for c in codes for s in self.shots]
        scores = self.scorer.score(reqs)
        n, out = len(self.shots), []
        for k in range(len(codes)):
            block = scores[k * n:(k + 1) * n]
            if self.kind == "loss":
                out.append(-sum(b.logprob[0] for b in block))
            else:
                errors = sum(b.prediction() != s.label for b, s in zip(block, self.shots))
                loss = -sum(b.logprob[s.label] for b, s in zip(block, self.shots))
                out.append(errors + loss / (1e6 * n))  # errors first, loss breaks ties
        return out
