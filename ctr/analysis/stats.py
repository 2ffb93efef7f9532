"""Pure statistics of code tables: usage, association with labels, distances, clustering,
and the bootstrap intervals of the steering experiment.

Every function takes a code table ([N tasks, L] integers) and one label per task (task
type, dataset or a synthetic factor), or plain samples, and returns numbers: numpy and
the standard library only, no file I/O, no model, no other module of ctr (so they are
testable on hand-made tables, and `ctr synth` can use them). Positions and values count
from 0, as in the codes themselves.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

UNKNOWN = "unknown"  # the label of a task whose type (or dataset) is not known


# ---- usage and association ------------------------------------------------------------
def usage_counts(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """[L, K]: how many tasks use each value at each position."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1, np.shape(codes)[-1])
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"code values must lie in [0, {codebook_size}), got min {codes.min()} "
                         f"max {codes.max()}")
    out = np.zeros((codes.shape[1], codebook_size), dtype=np.int64)
    for p in range(codes.shape[1]):
        out[p] = np.bincount(codes[:, p], minlength=codebook_size)
    return out


def entropy_bits(counts: np.ndarray) -> float:
    p = np.asarray(counts, dtype=np.float64).ravel()
    p = p[p > 0] / p.sum() if p.sum() else p[:0]
    return float(-(p * np.log2(p)).sum())


def perplexity(counts: np.ndarray) -> float:
    """2^entropy of the usage distribution: the effective number of values in use
    (same quantity as the training metric `code_perplexity`)."""
    return float(2.0 ** entropy_bits(counts))


def contingency(labels: Sequence[str], values: Sequence[int]
                ) -> tuple[list[str], list[int], np.ndarray]:
    """(label names, values, table [labels, values] of task counts), both sorted."""
    names = sorted(set(labels))
    vals = sorted({int(v) for v in values})
    li = {n: i for i, n in enumerate(names)}
    vi = {v: j for j, v in enumerate(vals)}
    table = np.zeros((len(names), len(vals)), dtype=np.int64)
    for lab, v in zip(labels, values):
        table[li[lab], vi[int(v)]] += 1
    return names, vals, table


def purity(table: np.ndarray) -> float:
    """Fraction of tasks whose label is the majority label of their value."""
    n = table.sum()
    return float(table.max(0).sum() / n) if n else 0.0


def mutual_information(table: np.ndarray) -> tuple[float, float]:
    """(MI in bits, normalised MI) of a [labels, values] count table.

    NMI = MI / mean(H(label), H(value)) (the arithmetic normalisation, sklearn's default);
    1.0 when both partitions are trivial, as sklearn does.
    """
    n = table.sum()
    if n == 0:
        return 0.0, 0.0
    h_l, h_v = entropy_bits(table.sum(1)), entropy_bits(table.sum(0))
    mi = max(0.0, h_l + h_v - entropy_bits(table))  # clip float noise below 0
    denom = (h_l + h_v) / 2
    if denom == 0:
        return mi, 1.0
    return mi, mi / denom


def shuffled_mi(labels: Sequence[str], values: Sequence[int], permutations: int,
                rng: np.random.Generator) -> np.ndarray:
    """MI (bits) of `permutations` random relabellings: MI's chance level, which is far
    above 0 when there are few tasks per value."""
    labels = np.asarray(labels, dtype=object)
    out = np.empty(permutations)
    for i in range(permutations):
        out[i] = mutual_information(contingency(list(rng.permutation(labels)), values)[2])[0]
    return out


def position_association(codes: np.ndarray, labels: Sequence[str], permutations: int = 0,
                         seed: int = 0) -> list[dict[str, Any]]:
    """Per position: purity, MI (bits), NMI, and with permutations the chance MI and a
    permutation p-value (with the +1 correction)."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(codes.shape[1]):
        table = contingency(labels, codes[:, p])[2]
        mi, nmi = mutual_information(table)
        rec: dict[str, Any] = {"position": p, "purity": purity(table), "mi_bits": mi, "nmi": nmi}
        if permutations:
            null = shuffled_mi(labels, codes[:, p], permutations, rng)
            rec["mi_chance_bits"] = float(null.mean())
            rec["mi_p_value"] = float((1 + (null >= mi - 1e-12).sum()) / (1 + permutations))
        out.append(rec)
    return out


@dataclass
class ValueAssociation:
    """How strongly one value at one position points to one label."""

    position: int
    value: int
    count: int  # tasks using this value at this position
    label: str  # the most common label among them
    label_count: int  # of those, tasks with that label
    label_total: int  # tasks with that label overall
    n_tasks: int

    @property
    def share(self) -> float:  # P(label | value)
        return self.label_count / self.count

    @property
    def score(self) -> float:
        """The share with one pseudo-count, so that a value used by one task (trivially
        pure) does not outrank one used by eleven tasks of a type and one other."""
        return self.label_count / (self.count + 1)

    @property
    def lift(self) -> float:  # P(label | value) / P(label)
        return self.share / (self.label_total / self.n_tasks)

    def describe(self, kind: str = "") -> str:
        kind = f" {kind}" if kind else ""
        return (f"value {self.value} at position {self.position}: {self.label_count} of "
                f"{self.count} tasks using it are {self.label} ({self.share:.0%}; "
                f"{self.label_total / self.n_tasks:.0%} of all tasks), and {self.label_count} of "
                f"the {self.label_total} {self.label}{kind} tasks use it")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "share": round(self.share, 4),
                "lift": round(self.lift, 3), "text": self.describe()}


def value_associations(codes: np.ndarray, labels: Sequence[str]) -> list[ValueAssociation]:
    """Every (position, value) in use with its majority label; ties go to the label that
    sorts first."""
    totals = Counter(labels)
    out = []
    for p in range(codes.shape[1]):
        names, vals, table = contingency(labels, codes[:, p])
        for j, v in enumerate(vals):
            col = table[:, j]
            i = int(col.argmax())
            out.append(ValueAssociation(p, v, int(col.sum()), names[i], int(col[i]),
                                        totals[names[i]], len(labels)))
    return out


def concentrated_values(codes: np.ndarray, labels: Sequence[str], min_count: int = 2,
                        min_share: float = 0.5, ignore: Sequence[str] = (UNKNOWN,)
                        ) -> list[ValueAssociation]:
    """Values used by at least `min_count` tasks, more than `min_share` of them of one
    label (a 50/50 split is not a concentration), most specific first."""
    found = [a for a in value_associations(codes, labels)
             if a.count >= min_count and a.share > min_share and a.label not in ignore]
    return sorted(found, key=lambda a: (-a.score, -a.label_count, -a.lift, a.position, a.value))


def label_values(codes: np.ndarray, labels: Sequence[str], label: str
                 ) -> list[ValueAssociation | None]:
    """For each position, the value most specific to `label` (highest score among the
    values `label` tasks use), or None where no `label` task exists."""
    totals = Counter(labels)
    best: list[ValueAssociation | None] = []
    for p in range(codes.shape[1]):
        names, vals, table = contingency(labels, codes[:, p])
        if label not in names:
            best.append(None)
            continue
        row = table[names.index(label)]
        cands = [ValueAssociation(p, v, int(table[:, j].sum()), label, int(row[j]), totals[label],
                                  len(labels)) for j, v in enumerate(vals) if row[j]]
        best.append(max(cands, key=lambda a: (a.score, a.label_count, -a.value)))
    return best


# ---- distances and clustering ---------------------------------------------------------
def hamming_matrix(codes: np.ndarray) -> np.ndarray:
    """[N, N] number of positions at which two codes differ."""
    codes = np.asarray(codes)
    return (codes[:, None, :] != codes[None, :, :]).sum(-1)


def average_linkage(dist: np.ndarray) -> tuple[list[tuple[int, int, float, int]], list[int]]:
    """Average-linkage (UPGMA) clustering of a distance matrix.

    scipy is not a dependency of this package (not in the venv), and N is a few hundred
    tasks at most, so a plain O(N^3) numpy loop with the Lance-Williams update is enough.
    Returns the merges as (cluster a, cluster b, height, size) in scipy's numbering
    (leaves 0..N-1, the i-th merge makes N + i) and the leaf order of the dendrogram
    (each merge puts a's leaves before b's). Ties merge the lowest index pair first.
    """
    n = len(dist)
    if n == 0:
        return [], []
    d = np.asarray(dist, dtype=np.float64).copy()
    np.fill_diagonal(d, np.inf)
    ids, sizes = list(range(n)), np.ones(n)
    members: list[list[int]] = [[i] for i in range(n)]
    merges = []
    for step in range(n - 1):
        a, b = divmod(int(np.argmin(d)), n)  # row-major first minimum: a < b
        merges.append((ids[a], ids[b], float(d[a, b]), int(sizes[a] + sizes[b])))
        new = (sizes[a] * d[a] + sizes[b] * d[b]) / (sizes[a] + sizes[b])
        d[a, :], d[:, a] = new, new
        d[a, a] = np.inf
        d[b, :], d[:, b] = np.inf, np.inf
        sizes[a] += sizes[b]
        members[a] += members[b]
        ids[a] = n + step
    return merges, members[ids.index(n + n - 2)] if n > 1 else [0]


def type_distance_summary(dist: np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Per label: mean Hamming distance between its tasks and to all other tasks."""
    labels = np.asarray(labels, dtype=object)
    out = []
    for lab in sorted(set(labels)):
        inside = labels == lab
        k = int(inside.sum())
        within = dist[np.ix_(inside, inside)]
        w = float(within.sum() / (k * (k - 1))) if k > 1 else None
        o = float(dist[np.ix_(inside, ~inside)].mean()) if (~inside).any() else None
        out.append({"label": lab, "tasks": k, "mean_within": w, "mean_to_others": o})
    return out


def nearest_codes(code: Sequence[int], codes: np.ndarray, names: Sequence[str], k: int = 3
                  ) -> list[tuple[str, int]]:
    """The k training tasks whose codes are closest in Hamming distance (ties by name)."""
    d = (np.asarray(codes) != np.asarray(code)[None]).sum(1)
    order = sorted(range(len(names)), key=lambda i: (int(d[i]), names[i]))
    return [(names[i], int(d[i])) for i in order[:k]]


# ---- one table, every statistic --------------------------------------------------------
def analyze_table(names: Sequence[str], codes: np.ndarray, types: Sequence[str],
                  datasets: Sequence[str], codebook_size: int, min_count: int = 2,
                  permutations: int = 200, seed: int = 0) -> dict[str, Any]:
    """Every statistic of the report for one code table (no I/O)."""
    codes = np.asarray(codes, dtype=np.int64)
    counts = usage_counts(codes, codebook_size)
    by_type = position_association(codes, types, permutations, seed)
    # users' JSONL tasks have no dataset: association with one shared label means nothing
    known = any(d != UNKNOWN for d in datasets)
    by_dataset = position_association(codes, datasets, permutations, seed + 1) if known else None
    positions = []
    for p in range(codes.shape[1]):
        used = np.nonzero(counts[p])[0]
        positions.append({
            "position": p, "values_in_use": len(used),
            "usage": {int(v): int(counts[p, v]) for v in used},
            "perplexity": perplexity(counts[p]),
            "dead_values": int(codebook_size - len(used)),
            "type": {k: v for k, v in by_type[p].items() if k != "position"},
            "dataset": ({k: v for k, v in by_dataset[p].items() if k != "position"}
                        if by_dataset else None),
        })
    dist = hamming_matrix(codes)
    merges, order = average_linkage(dist)
    return {
        "n_tasks": len(names), "code_length": int(codes.shape[1]), "codebook_size": codebook_size,
        "distinct_codes": len({tuple(c) for c in codes.tolist()}),
        "values_never_used": int(codebook_size - len(np.unique(codes))),
        "positions": positions,
        "type_specific_values": [a.to_dict() for a in concentrated_values(codes, types, min_count)],
        "dataset_specific_values": [a.to_dict() for a in
                                    concentrated_values(codes, datasets, min_count)],
        "type_distances": type_distance_summary(dist, types),
        "cluster_order": [names[i] for i in order],
        "merges": merges,
    }


# ---- bootstrap intervals -------------------------------------------------------------
def bootstrap_ci(x: Sequence[float], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean, seeded."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_effect(a: Sequence[float], b: Sequence[float], n_boot: int, seed: int) -> dict[str, float]:
    """mean(a) - mean(b) over the same inputs, bootstrapped over inputs (paired)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff, lo, hi = bootstrap_ci(a - b, n_boot, seed)
    return {"a": float(a.mean()), "b": float(b.mean()), "diff": diff, "ci_low": lo, "ci_high": hi,
            "n": int(a.size)}
