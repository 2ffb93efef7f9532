"""Codebook health of hand-made code tables: every figure against a count done by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctr.core.code_health import GOALS, codebook_health


def test_a_collapsed_table_fails_every_goal():
    # 6 tasks, 3 positions; value 7 fills 14 of 18 positions; two pairs of tasks share a code
    table = [[7, 7, 1], [7, 7, 1], [7, 7, 7], [7, 2, 7], [7, 7, 7], [3, 7, 7]]
    h = codebook_health(table, 8, ["a", "a", "a", "b", "b", "b"])
    assert h.tasks == 6 and h.distinct_codes == 4  # [7,7,1] and [7,7,7] twice each
    assert h.values_in_use == [2, 2, 2]
    assert h.largest_value == 7 and h.largest_value_share == pytest.approx(14 / 18)
    p0 = np.array([5, 1]) / 6  # position 0: value 7 five times, 3 once
    assert h.perplexity[0] == pytest.approx(math.exp(-(p0 * np.log(p0)).sum()), abs=1e-4)
    checks = h.checks()
    assert not any(checks[k] for k in ("distinct_share", "min_values", "min_perplexity", "max_value_share"))


def test_type_similarity_is_the_share_of_equal_positions_by_pair():
    table = [[0, 1, 2, 3], [0, 1, 5, 6], [4, 1, 2, 3], [9, 9, 9, 9]]
    types = ["x", "x", "y", "y"]
    h = codebook_health(table, 10, types)
    # same type: (0,1) share 2 of 4; (2,3) share 0  -> 0.25
    # different: (0,2) 3/4, (0,3) 0, (1,2) 1/4, (1,3) 0 -> 0.25
    assert h.same_type_similarity == pytest.approx(0.25)
    assert h.different_type_similarity == pytest.approx(0.25)
    assert h.type_gap == pytest.approx(0.0)
    grouped = codebook_health(table, 10, ["x", "y", "x", "z"])  # (0,2) is now a same-type pair
    assert grouped.same_type_similarity == pytest.approx(0.75)
    assert grouped.type_gap == pytest.approx(0.75 - 0.75 / 5)  # (0,1) 2/4, (1,2) 1/4, rest 0: 3/4 over 5
    unknown = codebook_health(table, 10, ["x", None, "x", ""])  # unknown types join no pair
    assert unknown.same_type_similarity == pytest.approx(0.75) and unknown.different_type_similarity is None
    assert unknown.type_gap is None and unknown.checks()["type_gap"] is None


def test_a_diverse_structured_table_meets_the_goals():
    rng = np.random.default_rng(0)
    T, L, K = 60, 10, 128
    table = rng.integers(0, K, size=(T, L))
    types = [str(t % 3) for t in range(T)]
    table[:, 0] = [int(t) for t in types]  # two positions carry the type
    table[:, 1] = [10 + int(t) for t in types]
    h = codebook_health(torch.as_tensor(table), K, types)
    assert h.distinct_codes == T
    assert h.type_gap >= GOALS["type_gap"]
    assert h.checks()["distinct_share"] and h.checks()["type_gap"]
    assert not h.checks()["min_values"]  # positions 0 and 1 use 3 values each
    assert "**no**" in h.markdown() and "| yes |" in h.markdown()


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match=r"\[tasks, positions\]"):
        codebook_health([1, 2, 3], 8)
    with pytest.raises(ValueError, match="2 task types for 3 tasks"):
        codebook_health([[1], [2], [3]], 8, ["a", "b"])
