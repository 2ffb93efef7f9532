"""What the codes mean (`ctr analyze`): usage, association with task types, distances.

The statistics are pure numpy functions of a code table ([N tasks, L] integers) and one
label per task (task type or dataset), testable on hand-made tables. `run_analysis` does
the I/O: it reads a checkpoint's code table, the task types, optional adapted codes,
and writes `analysis.json`, `analysis.md` and two PNG figures. Positions and values count
from 0, as in the codes themselves.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctr.config import opt
from ctr.fileio import read_codes_file, read_json, write_json

UNKNOWN = "unknown"
# Task types of the held-out tasks (T0 paper, table of held-out types), so that adapted
# codes from codes.json can be named; near-transfer sets share T0 training types.
HELDOUT_TYPES = {
    "anli_r1": "natural_language_inference", "anli_r2": "natural_language_inference",
    "anli_r3": "natural_language_inference", "super_glue_cb": "natural_language_inference",
    "super_glue_rte": "natural_language_inference", "super_glue_wsc.fixed": "coreference",
    "winogrande_winogrande_xl": "coreference", "super_glue_copa": "sentence_completion",
    "hellaswag": "sentence_completion", "story_cloze_2016": "sentence_completion",
    "super_glue_wic": "word_sense_disambiguation", "glue_sst2": "sentiment",
    "ag_news": "topic_classification", "trec": "question_classification",
}


@dataclass
class AnalyzeConfig:
    """`ctr analyze`: what a checkpoint's codes mean (+ an optional steering experiment)."""

    checkpoint: str = opt("", "CTR checkpoint (run folder, final/ or model folder); "
                              "may also be given as the positional argument")
    codes_file: str | None = opt(None, "JSON {task: code} of adapted codes (ctr zero-label / "
                                       "few-shot), placed among the training codes")
    types_file: str | None = opt(None, "JSON {task: task type} for tasks the T0 manifest does "
                                       "not know (users' JSONL tasks); overrides the manifest")
    factors_file: str | None = opt(
        None, "JSON {task: {factor: value}}, e.g. the factors.json of `ctr synth`: each factor "
              "gets its own association table and heatmap, and the first factor serves as the "
              "task type unless --types-file is given")
    data_dir: str | None = opt(None, "data folder with t0_train_manifest.tsv "
                                     "(default: $CTR_DATA_DIR or ../shared/data)")
    output_dir: str = opt("runs/analysis", "where analysis.json, analysis.md and the PNGs go")
    min_count: int = opt(2, "a value must be used by at least this many tasks to be reported "
                            "as type-specific (a value of one task is trivially pure)")
    top: int = opt(15, "how many type-specific values the report names")
    permutations: int = opt(200, "label shuffles for the chance level of mutual information")
    seed: int = opt(0, "seed for the shuffles, steering inputs, random controls and bootstrap")
    steer: bool = opt(False, "also run the controllability experiment (loads the model)")
    steer_tasks: list[str] = opt([], "tasks to steer: training tasks, or tasks of --codes-file "
                                     "(default: up to 3 training tasks with answer choices)")
    steer_type: str = opt("summarization", "task type whose most specific values replace the "
                                           "task's own")
    steer_positions: list[int] = opt([], "positions to replace (default: the best "
                                         "--steer-n-positions for each task)")
    steer_n_positions: int = opt(1, "how many positions to replace when not given")
    steer_inputs: int = opt(16, "inputs per steered task")
    steer_random: int = opt(8, "random replacement codes per task (the control)")
    steer_max_new_tokens: int = opt(32, "new tokens at most per generation")
    steer_batch_size: int = opt(32, "rows per generate call (codes mixed within a batch)")
    bootstrap: int = opt(1000, "bootstrap resamples for the 95 percent intervals")


# ---- pure statistics ------------------------------------------------------------------
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


# ---- I/O ------------------------------------------------------------------------------
def find_model_dir(path: str | Path) -> Path:
    from ctr.core.model import CONFIG_FILE, find_model_dir as locate
    p = Path(path)
    found = locate(p)
    if found is not None:
        return found
    raise FileNotFoundError(f"{p}: not a CTR checkpoint (no {CONFIG_FILE} in it, its final/ "
                            "or model/)")


def load_code_table(path: str | Path) -> tuple[dict[str, list[int]], dict[str, Any], Path]:
    """(code table, CTR config dict, model folder). The code table is read from
    code_table.json, which save_pretrained writes from model.code_table(): the analysis
    then needs no backbone. Older folders without it are loaded with load_for_eval."""
    from ctr.core.model import CODE_TABLE_FILE, CONFIG_FILE
    folder = find_model_dir(path)
    config = read_json(folder / CONFIG_FILE)
    if not config.get("use_codes", True):
        raise ValueError(f"{folder}: a model trained without codes (use_codes=false) has no codes")
    if (folder / CODE_TABLE_FILE).exists():
        table = read_json(folder / CODE_TABLE_FILE)
    else:
        from ctr.inference.evaluate import load_for_eval
        table = load_for_eval(str(folder)).code_table()
    if not table:
        raise ValueError(f"{folder}: the code table is empty")
    return table, config, folder


def task_labels(names: Sequence[str], data_dir_arg: str | None = None,
                types_file: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """(task types, datasets, notes). T0 training tasks take both from the manifest; other
    tasks take types from --types-file, HELDOUT_TYPES, else 'unknown'."""
    from ctr.tasks.mixture import data_dir, read_manifest
    notes: list[str] = []
    manifest: dict[str, dict[str, str]] = {}
    try:
        manifest = read_manifest(data_dir(data_dir_arg))
    except FileNotFoundError as e:
        if data_dir_arg is not None:
            raise
        notes.append(f"T0 manifest not available ({e}); types come from --types-file only")
    extra = read_json(types_file) if types_file else {}
    if not isinstance(extra, dict):
        raise ValueError(f"--types-file {types_file}: expected a JSON object {{task: type}}")
    types, datasets = [], []
    for n in names:
        row = manifest.get(f"{n}.jsonl", {})
        types.append(str(extra.get(n) or row.get("task_type") or HELDOUT_TYPES.get(n, UNKNOWN)))
        datasets.append(row.get("dataset") or (n if n in HELDOUT_TYPES else UNKNOWN))
    unknown = sum(t == UNKNOWN for t in types)
    if unknown:
        notes.append(f"{unknown} of {len(names)} tasks have no known type ('{UNKNOWN}')")
    return types, datasets, notes


def read_adapted_codes(path: str, codebook_size: int, code_length: int) -> dict[str, list[int]]:
    table = read_codes_file(path)[0]  # codes.json of ctr zero-label / few-shot, or {task: code}
    if not isinstance(table, dict):
        raise ValueError(f"--codes-file {path}: expected a JSON object {{task: code}}")
    for t, code in table.items():
        if (not isinstance(code, list) or len(code) != code_length
                or not all(isinstance(c, int) and 0 <= c < codebook_size for c in code)):
            raise ValueError(f"--codes-file {path}: task {t}: expected {code_length} integers "
                             f"in [0, {codebook_size}), got {code!r}")
    return table


def read_factors(path: str, names: Sequence[str]) -> dict[str, list[str]]:
    """{factor: one label per task in `names` order} from a JSON {task: {factor: value}}."""
    raw = read_json(path)
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError(f"--factors-file {path}: expected a JSON object {{task: {{factor: value}}}}")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ValueError(f"--factors-file {path}: no factors for {len(missing)} task(s) of the "
                         f"checkpoint, e.g. {missing[:3]}")
    factors = list(raw[names[0]])
    odd = [n for n in names if list(raw[n]) != factors]
    if odd:
        raise ValueError(f"--factors-file {path}: tasks {odd[:3]} do not have the factors {factors}")
    return {f: [str(raw[n][f]) for n in names] for f in factors}


def adapted_report(adapted: dict[str, list[int]], names: list[str], codes: np.ndarray,
                   types: list[str], min_count: int) -> dict[str, Any]:
    """Where each adapted code sits: nearest training codes, and the type-specific values
    it carries."""
    specific = {(a.position, a.value): a for a in concentrated_values(codes, types, min_count)}
    out = {}
    for task, code in adapted.items():
        carried = [specific[(p, v)].to_dict() for p, v in enumerate(code) if (p, v) in specific]
        near = nearest_codes(code, codes, names)
        out[task] = {"code": code, "type": HELDOUT_TYPES.get(task, UNKNOWN),
                     "nearest": [{"task": n, "type": types[names.index(n)], "distance": d}
                                 for n, d in near],
                     "is_training_code": any(d == 0 for _, d in near),
                     "type_specific_values": carried}
    return out


def plot_value_heatmaps(path: Path, codes: np.ndarray, types: list[str],
                        label: str = "task type") -> None:
    """One subplot per position: task type (or another label) x value (only values in use),
    task counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    L = codes.shape[1]
    tables = [contingency(types, codes[:, p]) for p in range(L)]
    n_types = len(tables[0][0])
    widest = max(len(t[1]) for t in tables)
    cols = max(1, min(L, 5, 40 // max(widest, 1)))  # many values in use: one panel per row
    rows = math.ceil(L / cols)
    fig = Figure(figsize=(cols * (0.2 * widest + 2.5), rows * (0.25 * n_types + 1.3)),
                 layout="constrained")
    FigureCanvasAgg(fig)  # Agg: PNG without a display or pyplot's global state
    vmax = max(int(t[2].max()) for t in tables)
    for p, (names, vals, table) in enumerate(tables):
        ax = fig.add_subplot(rows, cols, p + 1)
        im = ax.imshow(table, aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(f"position {p}", fontsize=9)
        ax.set_xticks(range(len(vals)), [str(v) for v in vals], fontsize=6, rotation=90)
        ax.set_yticks(range(len(names)), names if p % cols == 0 else [""] * len(names), fontsize=7)
        ax.set_xlabel("value", fontsize=7)
    fig.colorbar(im, ax=fig.axes, shrink=0.6 if rows <= 2 else 0.25, label="tasks")
    fig.suptitle(f"Code values by {label} (tasks using each value)")
    fig.savefig(path, dpi=110)


def plot_distance_map(path: Path, dist: np.ndarray, names: list[str], types: list[str],
                      order: list[int]) -> None:
    """Hamming distance matrix with tasks in dendrogram order, a task-type colour strip
    on the left, and task names when there are few enough to read."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    n = len(names)
    size = min(18.0, max(5.0, 0.16 * n + 3))
    fig = Figure(figsize=(size + 4, size), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(1, 2, width_ratios=[1, 30])
    strip, ax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    kinds = sorted(set(types))
    colour = np.array([[kinds.index(types[i])] for i in order])
    strip.imshow(colour, aspect="auto", cmap="tab20", vmin=0, vmax=max(19, len(kinds) - 1),
                 interpolation="nearest")
    strip.set_xticks([])
    # aspect "auto" on both axes keeps the strip's rows level with the matrix rows
    im = ax.imshow(dist[np.ix_(order, order)], aspect="auto", cmap="magma_r",
                   interpolation="nearest")
    labels = [names[i] for i in order]
    if n <= 80:
        strip.set_yticks(range(n), labels, fontsize=max(4, 9 - n // 12))
        ax.set_xticks(range(n), labels, fontsize=max(4, 9 - n // 12), rotation=90)
    else:
        strip.set_yticks([])
        ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, shrink=0.6, label="Hamming distance (positions that differ)")
    cmap = strip.images[0].cmap
    handles = [_patch(cmap(k / max(19, len(kinds) - 1)), t) for k, t in enumerate(kinds)]
    fig.legend(handles=handles, fontsize=8, loc="outside right upper",
               title="task type (left strip)")
    ax.set_title("Task codes: Hamming distances, average-linkage order")
    fig.savefig(path, dpi=110)


def _patch(colour: Any, label: str) -> Any:
    from matplotlib.patches import Patch
    return Patch(color=colour, label=label)


def markdown_report(res: dict[str, Any], top: int) -> str:
    """The report in words: usage per position, the most type-specific values, distances,
    adapted codes and the steering experiment."""
    s = res["statistics"]
    lines = [f"# Code analysis: `{res['checkpoint']}`", "",
             f"{s['n_tasks']} training tasks, code length L = {s['code_length']}, codebook "
             f"K = {s['codebook_size']}; {s['distinct_codes']} distinct codes; "
             f"{s['values_never_used']} of {s['codebook_size']} values are used at no position. "
             "Positions and values count from 0.", ""]
    lines += [f"> {n}" for n in res["notes"]] + ([""] if res["notes"] else [])
    lines += ["## Usage and association per position", "",
              "MI is the mutual information (bits) between a position's value and the task's type "
              "(or dataset); *chance* is its mean over random relabellings, which is well above 0 "
              "when few tasks share each value, so compare MI with it rather than with 0.", "",
              "| position | values in use | dead values | perplexity | type purity | type MI (bits) "
              "| chance MI | p | type NMI | dataset purity | dataset MI |", "|" + "---|" * 11]
    for p in s["positions"]:
        t, d = p["type"], p["dataset"] or {"purity": None, "mi_bits": None}
        lines.append(
            f"| {p['position']} | {p['values_in_use']} | {p['dead_values']} | {p['perplexity']:.2f} "
            f"| {t['purity']:.2f} | {t['mi_bits']:.2f} | {_fmt(t.get('mi_chance_bits'))} "
            f"| {_fmt(t.get('mi_p_value'), 3)} | {t['nmi']:.2f} | {_fmt(d['purity'])} "
            f"| {_fmt(d['mi_bits'])} |")
    if s.get("factors"):
        lines += ["", "## Association with factors", "",
                  "The same statistics with each ground-truth factor as the label (from "
                  "--factors-file).", "",
                  "| factor | position | values in use | purity | MI (bits) | chance MI | p | NMI |",
                  "|" + "---|" * 8]
        for f, rows in s["factors"].items():
            for r in rows:
                used = s["positions"][r["position"]]["values_in_use"]
                lines.append(f"| {f} | {r['position']} | {used} | {r['purity']:.2f} "
                             f"| {r['mi_bits']:.2f} | {_fmt(r.get('mi_chance_bits'))} "
                             f"| {_fmt(r.get('mi_p_value'), 3)} | {r['nmi']:.2f} |")
    lines += ["", "## The most type-specific values", ""]
    specific = s["type_specific_values"][:top]
    if specific:
        lines += [f"- {a['text']}." for a in specific]
    else:
        lines.append("No value used by at least min_count tasks is concentrated in one known type.")
    lines += ["", "## Distances between task codes", "",
              "| task type | tasks | mean Hamming distance within | to other types |",
              "|---|---|---|---|"]
    for r in s["type_distances"]:
        lines.append(f"| {r['label']} | {r['tasks']} | {_fmt(r['mean_within'])} "
                     f"| {_fmt(r['mean_to_others'])} |")
    if res.get("adapted"):
        lines += ["", "## Adapted codes", ""]
        for task, a in res["adapted"].items():
            near = ", ".join(f"{x['task']} ({x['type']}, distance {x['distance']})"
                             for x in a["nearest"])
            carried = "; ".join(f"value {v['value']} at position {v['position']} "
                                f"({v['label']}, {v['share']:.0%})"
                                for v in a["type_specific_values"]) or "none"
            lines.append(f"- **{task}** ({a['type']}) `{a['code']}`: nearest training codes "
                         f"{near}. Type-specific values it carries: {carried}.")
    lines += ["", "## Figures", "", "- `code_values_by_type.png`: task type x value per position.",
              "- `task_distances.png`: Hamming distances, tasks in average-linkage order."]
    lines += [f"- `code_values_by_{f}.png`: {f} x value per position." for f in s.get("factors", {})]
    if res.get("steering"):
        from ctr.analysis.steering import steering_markdown
        lines += ["", steering_markdown(res["steering"])]
    return "\n".join(lines) + "\n"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def run_analysis(cfg: AnalyzeConfig) -> dict[str, Any]:
    if not cfg.checkpoint:
        raise ValueError("pass a checkpoint: ctr analyze CHECKPOINT")
    table, config, folder = load_code_table(cfg.checkpoint)
    K, L = int(config["codebook_size"]), int(config["code_length"])
    names = list(table)
    codes = np.array([table[n] for n in names], dtype=np.int64)
    factors = read_factors(cfg.factors_file, names) if cfg.factors_file else {}
    if factors and not cfg.types_file:  # synthetic tasks: no manifest, the factors label them
        types, notes = list(factors.values())[0], [
            f"task type = factor '{list(factors)[0]}' (from --factors-file)"]
        datasets = [UNKNOWN] * len(names)
    else:
        types, datasets, notes = task_labels(names, cfg.data_dir, cfg.types_file)
    adapted = read_adapted_codes(cfg.codes_file, K, L) if cfg.codes_file else {}
    stats = analyze_table(names, codes, types, datasets, K, cfg.min_count, cfg.permutations,
                          cfg.seed)
    if factors:
        stats["factors"] = {f: position_association(codes, labels, cfg.permutations, cfg.seed)
                            for f, labels in factors.items()}
    res: dict[str, Any] = {
        "config": dataclasses.asdict(cfg), "checkpoint": str(folder), "notes": notes,
        "tasks": [{"name": n, "type": t, "dataset": d, "code": table[n]}
                  for n, t, d in zip(names, types, datasets)],
        "statistics": stats,
        "adapted": adapted_report(adapted, names, codes, types, cfg.min_count) if adapted else {},
    }
    if cfg.steer:
        from ctr.analysis.steering import run_steering
        res["steering"] = run_steering(cfg, folder, table, types, adapted)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_value_heatmaps(out / "code_values_by_type.png", codes, types)
    for f, labels in factors.items():
        plot_value_heatmaps(out / f"code_values_by_{f}.png", codes, labels, label=f"factor {f}")
    all_names = names + [f"* {t}" for t in adapted]  # adapted codes join the distance map
    all_codes = np.concatenate([codes, np.array(list(adapted.values()), dtype=np.int64)]) \
        if adapted else codes
    all_types = types + [HELDOUT_TYPES.get(t, UNKNOWN) for t in adapted]
    dist = hamming_matrix(all_codes)
    plot_distance_map(out / "task_distances.png", dist, all_names, all_types,
                      average_linkage(dist)[1])
    write_json(out / "analysis.json", res)
    report = markdown_report(res, cfg.top)
    (out / "analysis.md").write_text(report)
    print(report)
    figures = ["code_values_by_type.png", "task_distances.png"] + [
        f"code_values_by_{f}.png" for f in factors]
    print(f"[analyze] wrote {out / 'analysis.json'}, {out / 'analysis.md'} and "
          f"{', '.join(str(out / f) for f in figures)}")
    return res
