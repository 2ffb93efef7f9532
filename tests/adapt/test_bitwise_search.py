"""Bitwise Search on objectives known by construction and on a real tiny model."""
from __future__ import annotations

import json

import pytest
import torch

from ctr.adapt.bitwise_search import Shot, ShotObjective, bitwise_search
from ctr.inference.scoring import RankScorer, ScoreRequest

from adapt_support import ctr_model, dies_after  # tests/adapt is on sys.path under pytest

L, K = 4, 8


TARGET = [3, 7, 0, 5]


def hamming(codes):
    return [float(sum(a != b for a, b in zip(c, TARGET))) for c in codes]


def test_search_finds_the_code_known_by_construction():
    starts = [[1, 1, 1, 1], [2, 2, 2, 2]]
    res = bitwise_search(hamming, starts, [list(range(K))] * L, seed=3)
    assert res.code == TARGET and res.objective == 0.0
    assert res.start_objective == 4.0


def test_search_only_accepts_strict_improvements():
    table = torch.rand(*(K,) * L, generator=torch.Generator().manual_seed(0))
    noisy = lambda codes: [float(table[tuple(c)]) for c in codes]
    res = bitwise_search(noisy, [[0, 1, 2, 3], [4, 4, 4, 4]], [list(range(K))] * L, seed=1)
    prev = res.start_objective
    for rec in res.trajectory[1:]:
        if rec["accepted"]:
            assert rec["objective"] < prev
        else:
            assert rec["objective"] == prev and rec.get("best_objective", prev + 1) >= prev
        prev = rec["objective"]
    starts = [[0, 1, 2, 3], [4, 4, 4, 4]]
    assert res.start_code == min(starts, key=lambda c: noisy([c])[0])  # the better start is taken
    assert res.start_objective == noisy([res.start_code])[0]
    assert res.objective == float(table[tuple(res.code)])
    # a local optimum: no single-position change improves it
    for p in range(L):
        for v in range(K):
            c = list(res.code)
            c[p] = v
            assert noisy([c])[0] >= res.objective


@pytest.mark.parametrize("restricted", [False, True])
def test_search_equals_brute_force_on_a_separable_objective(restricted):
    """On an objective that is a sum over positions, coordinate search is exact: on a
    small space its result must be the brute-force optimum (over the allowed values),
    reached in one sweep and confirmed by a second."""
    import itertools
    k, length = 5, 3
    cost = torch.rand(length, k, generator=torch.Generator().manual_seed(11))
    f = lambda codes: [float(sum(cost[p, v] for p, v in enumerate(c))) for c in codes]
    values = [[0, 2, 4], [1, 3], [0, 1, 2, 3, 4]] if restricted else [list(range(k))] * length
    space = [list(c) for c in itertools.product(*values)]
    best = min(space, key=lambda c: f([c])[0])
    starts = [[4, 3, 4], [0, 1, 2]]
    assert best not in starts
    res = bitwise_search(f, starts, values, seed=0)
    assert res.code == best and res.objective == pytest.approx(f([best])[0])
    assert res.start_code == min(starts, key=lambda c: f([c])[0])
    tried = sum(len(v) - 1 for v in values)  # every other allowed value of each position
    assert res.sweeps == 2 and res.evaluations == len(starts) + 2 * tried


def authors_loop(objective, starts, values, max_sweeps=20, seed=0):
    """The authors' search, written out here from its description and independently of
    `bitwise_search`: one code per objective call. Take the best start (first on ties); sweep
    the positions in the seeded order random.Random(seed * 1_000_003 + sweep).sample(range(L), L);
    at each position try every other allowed value in order, keep the best (first on ties)
    only if it is strictly lower; stop after a sweep without a change.
    Returns (code, objective, evaluations, sweeps)."""
    import random
    calls = 0

    def one(code):
        nonlocal calls
        calls += 1
        return objective([code])[0]
    start_scores = [one(list(c)) for c in starts]
    best = start_scores.index(min(start_scores))
    code, obj = list(starts[best]), start_scores[best]
    sweeps = 0
    for sweep in range(max_sweeps):
        sweeps += 1
        changed = False
        for pos in random.Random(seed * 1_000_003 + sweep).sample(range(len(values)), len(values)):
            best_v, best_obj = None, None
            for v in values[pos]:
                if v == code[pos]:
                    continue
                o = one(code[:pos] + [v] + code[pos + 1:])
                if best_obj is None or o < best_obj:
                    best_v, best_obj = v, o
            if best_obj is not None and best_obj < obj:
                code, obj, changed = code[:pos] + [best_v] + code[pos + 1:], best_obj, True
        if not changed:
            break
    return code, obj, calls, sweeps


@pytest.mark.parametrize("seed", [2, 9])
def test_batched_and_one_at_a_time_searches_agree(seed):
    """The batched search reaches the authors' one-code-at-a-time loop's code, objective,
    evaluation count and sweeps, on a rough objective and on values restricted per position."""
    table = torch.rand(*(K,) * L, generator=torch.Generator().manual_seed(5 + seed))
    f = lambda codes: [float(table[tuple(c)]) for c in codes]
    starts = [[0, 0, 0, 0], [1, 2, 3, 4], [7, 6, 5, 4]]
    for values in ([list(range(K))] * L, [[0, 2, 4, 6], [1, 2], list(range(K)), [3, 4, 7]]):
        starts_ok = [[v[0] if c[p] not in v else c[p] for p, v in enumerate(values)] for c in starts]
        a = bitwise_search(f, starts_ok, values, seed=seed)
        code, obj, evaluations, sweeps = authors_loop(f, starts_ok, values, seed=seed)
        assert (a.code, a.objective, a.evaluations, a.sweeps) == (code, obj, evaluations, sweeps)
        assert a.sweeps >= 2  # the search moved, and a last sweep confirmed it


def test_interrupted_search_resumes_the_same_trajectory(tmp_path):
    table = torch.rand(*(K,) * L, generator=torch.Generator().manual_seed(7))
    f = lambda codes: [float(table[tuple(c)]) for c in codes]
    starts = [[0, 0, 0, 0], [5, 5, 5, 5]]
    full = bitwise_search(f, starts, [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "full.jsonl")
    dies = dies_after(f, 4)
    with pytest.raises(KeyboardInterrupt):
        bitwise_search(dies, starts, [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "cut.jsonl")
    assert len((tmp_path / "cut.jsonl").read_text().splitlines()) == 3  # start + 2 positions
    resumed = bitwise_search(f, starts, [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "cut.jsonl")
    assert resumed.code == full.code and resumed.objective == full.objective
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "time"}
                       for x in p.read_text().splitlines()]
    assert strip(tmp_path / "cut.jsonl") == strip(tmp_path / "full.jsonl")
    # other start codes: the stale trajectory is replaced by a fresh search (tests/test_resume_safety.py)
    other = bitwise_search(f, [[1, 1, 1, 1]], [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "cut.jsonl")
    assert other.code == bitwise_search(f, [[1, 1, 1, 1]], [list(range(K))] * L, seed=4).code


def test_shot_objective_batches_codes_and_matches_single_scoring():
    model = ctr_model()
    shots = [Shot([5, 6, 7], [[20, 21], [22]], 0), Shot([8, 9], [[23], [24, 25]], 1)]
    obj = ShotObjective(RankScorer(model, 4, progress=False), shots)
    codes = [[0, 1, 2, 3], [4, 5, 6, 7], [7, 7, 7, 7]]
    batched = obj(codes)
    for c, v in zip(codes, batched):
        ref = 0.0
        for s in shots:
            sc = RankScorer(model, 1, progress=False).score([ScoreRequest(s.input_ids, s.choices, c)])[0]
            ref -= sc.logprob[s.label]
        assert v == pytest.approx(ref, abs=1e-4)
    acc = ShotObjective(RankScorer(model, 4, progress=False), shots, "accuracy")(codes)
    for c, a, loss in zip(codes, acc, batched):
        single = [RankScorer(model, 1, progress=False).score([ScoreRequest(s.input_ids, s.choices, c)])[0]
                  for s in shots]
        errors = sum(sc.prediction() != s.label for sc, s in zip(single, shots))
        full_loss = -sum(sc.logprob[s.label] for sc, s in zip(single, shots))
        assert full_loss == pytest.approx(loss, abs=1e-4)
        assert a == pytest.approx(errors + full_loss / (1e6 * len(shots)), abs=1e-9)


def test_search_on_a_real_model_ends_in_a_local_optimum_from_the_best_start():
    model = ctr_model()
    shots = [Shot([5 + i, 6, 7], [[20, 21], [22]], i % 2) for i in range(4)]
    obj = ShotObjective(RankScorer(model, 8, progress=False), shots)
    starts = list(model.code_table().values())
    res = bitwise_search(obj, starts, [list(range(K))] * L, max_sweeps=20, seed=0)
    assert res.start_objective == pytest.approx(min(obj(starts)), abs=1e-4)
    assert res.objective == pytest.approx(obj([res.code])[0], abs=1e-4)
    accepted = [r for r in res.trajectory[1:] if r["accepted"]]
    assert accepted, "the random model's start code should be improvable"
    objs = [res.start_objective] + [r["objective"] for r in accepted]
    assert all(b < a for a, b in zip(objs, objs[1:])) and objs[-1] == res.objective
    for r in accepted:  # each accepted step is the best value at its position, scored right
        assert r["objective"] == r["best_objective"] == pytest.approx(obj([r["code"]])[0], abs=1e-4)
    assert res.sweeps < 20  # converged: its last sweep changed nothing...
    neighbours = [res.code[:p] + [v] + res.code[p + 1:] for p in range(L) for v in range(K)
                  if v != res.code[p]]
    assert min(obj(neighbours)) >= res.objective - 1e-4  # ...so no one-position change helps


