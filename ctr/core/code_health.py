"""Codebook health: whether a code table still tells the training tasks apart.

A codebook can collapse while the loss looks fine: many tasks end on one code, one value
fills most positions, and zero-label selection has nothing to choose from. `codebook_health`
summarises a code table [T tasks, L positions] (values in [0, K)) in the figures that show
it, each with the threshold a healthy table meets (`GOALS`):

- per position: the values in use and their perplexity over the tasks (exp of the entropy:
  the effective number of values);
- distinct codes / tasks (two tasks with the same code cannot be told apart);
- the largest value's share of all T x L positions of the table;
- with task types: the mean share of equal positions of two tasks of the same type minus
  that of two tasks of different types. Random codes score about 0 however diverse they
  are; codes that mean something score above 0.

The trainer logs the scalar figures at every logged step (metrics.jsonl) and writes the
whole report at the end of a run; `ctr codes RUN` prints it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

HEALTH_FILE = "codebook_health.json"
HEALTH_MARKDOWN = "codebook_health.md"
# The thresholds of a healthy table (distinct codes as a share of the tasks).
GOALS = {"distinct_share": 0.95, "min_values": 16, "min_perplexity": 8.0,
         "max_value_share": 0.20, "type_gap": 0.15}


@dataclass
class CodebookHealth:
    tasks: int
    codebook_size: int
    values_in_use: list[int]  # per position
    perplexity: list[float]  # per position
    distinct_codes: int
    largest_value: int
    largest_value_share: float  # of all tasks x positions
    same_type_similarity: float | None = None  # mean share of equal positions, same type
    different_type_similarity: float | None = None
    types: int | None = None  # task types with at least one task

    @property
    def distinct_share(self) -> float:
        return self.distinct_codes / max(1, self.tasks)

    @property
    def type_gap(self) -> float | None:
        if self.same_type_similarity is None or self.different_type_similarity is None:
            return None
        return self.same_type_similarity - self.different_type_similarity

    def checks(self) -> dict[str, bool | None]:
        """Each goal of `GOALS`: met, missed, or None when it cannot be judged (no types)."""
        gap = self.type_gap
        return {"distinct_share": self.distinct_share >= GOALS["distinct_share"],
                "min_values": min(self.values_in_use, default=0) >= GOALS["min_values"],
                "min_perplexity": min(self.perplexity, default=0.0) >= GOALS["min_perplexity"],
                "max_value_share": self.largest_value_share <= GOALS["max_value_share"],
                "type_gap": None if gap is None else gap >= GOALS["type_gap"]}

    def scalars(self) -> dict[str, Any]:
        """The figures a metrics.jsonl record carries."""
        out = {"distinct_codes": self.distinct_codes,
               "largest_value_share": round(self.largest_value_share, 4),
               "min_position_perplexity": round(min(self.perplexity, default=0.0), 3)}
        if self.type_gap is not None:
            out["type_gap"] = round(self.type_gap, 4)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "distinct_share": round(self.distinct_share, 4),
                "type_gap": None if self.type_gap is None else round(self.type_gap, 4),
                "checks": self.checks(), "goals": dict(GOALS)}

    def markdown(self) -> str:
        mark = {True: "yes", False: "**no**", None: "-"}
        c, g = self.checks(), GOALS
        gap = "no task types known" if self.type_gap is None else (
            f"{self.same_type_similarity:.3f} - {self.different_type_similarity:.3f} = {self.type_gap:+.3f}")
        rows = [
            ("distinct codes / tasks", f"{self.distinct_codes} / {self.tasks} ({self.distinct_share:.0%})",
             f">= {g['distinct_share']:.0%}", c["distinct_share"]),
            ("fewest values in use at a position", f"{min(self.values_in_use, default=0)} of {self.codebook_size}",
             f">= {g['min_values']}", c["min_values"]),
            ("lowest perplexity at a position", f"{min(self.perplexity, default=0.0):.1f}",
             f">= {g['min_perplexity']:g}", c["min_perplexity"]),
            ("largest value's share of the table", f"{self.largest_value_share:.1%} (value {self.largest_value})",
             f"<= {g['max_value_share']:.0%}", c["max_value_share"]),
            ("same-type minus different-type similarity", gap, f">= {g['type_gap']:g}", c["type_gap"]),
        ]
        lines = ["| figure | value | healthy | met |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {h} | {mark[m]} |" for a, b, h, m in rows]
        lines += ["", "| position | " + " | ".join(str(i) for i in range(len(self.perplexity))) + " |",
                  "|---|" + "---:|" * len(self.perplexity),
                  "| values in use | " + " | ".join(map(str, self.values_in_use)) + " |",
                  "| perplexity | " + " | ".join(f"{p:.1f}" for p in self.perplexity) + " |"]
        return "\n".join(lines)


def _perplexity(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum())) if counts.sum() else 0.0


def codebook_health(codes: Any, codebook_size: int,
                    types: Sequence[str | None] | None = None) -> CodebookHealth:
    """The health of a code table [T, L] (a tensor, array or nested list); `types` gives
    each task's type (None or "" for unknown: such tasks take part in no pair)."""
    table = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes, dtype=np.int64)
    if table.ndim != 2:
        raise ValueError(f"a code table is [tasks, positions], got shape {list(table.shape)}")
    T, L = table.shape
    counts = [np.bincount(table[:, i], minlength=codebook_size) for i in range(L)]
    whole = np.bincount(table.ravel(), minlength=codebook_size) if T else np.zeros(codebook_size, int)
    health = CodebookHealth(
        tasks=T, codebook_size=codebook_size, values_in_use=[int((c > 0).sum()) for c in counts],
        perplexity=[round(_perplexity(c), 4) for c in counts],
        distinct_codes=len({tuple(r) for r in table.tolist()}), largest_value=int(whole.argmax()),
        largest_value_share=float(whole.max() / max(1, table.size)))
    if types is not None:
        if len(types) != T:
            raise ValueError(f"{len(types)} task types for {T} tasks")
        known = np.array([bool(t) for t in types])
        labels = np.array([t or "" for t in types], dtype=object)
        similar = (table[:, None, :] == table[None, :, :]).mean(-1)  # [T, T] share of equal positions
        pair = np.triu(np.ones((T, T), dtype=bool), 1) & known[:, None] & known[None, :]
        same = labels[:, None] == labels[None, :]
        if (pair & same).any():
            health.same_type_similarity = round(float(similar[pair & same].mean()), 4)
        if (pair & ~same).any():
            health.different_type_similarity = round(float(similar[pair & ~same].mean()), 4)
        health.types = len(set(labels[known]))
    return health
