"""What the codes mean (`ctr analyze`): reading the inputs, the figures, the report.

`run_analysis` does the I/O around the statistics of `stats.py`: it reads a checkpoint's
code table, the task types (or the factors of synthetic tasks), optional adapted codes,
runs the optional steering experiment (`steering.py`), and writes `analysis.json`,
`analysis.md` and the PNG figures. Positions and values count from 0, as in the codes.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctr.analysis.options import AnalyzeConfig
from ctr.analysis.stats import (UNKNOWN, analyze_table, average_linkage, concentrated_values,
                                contingency, hamming_matrix, nearest_codes, position_association)
from ctr.analysis.steering import run_steering, steering_markdown
from ctr.core.codes import read_checked_codes
from ctr.core.loading import load_code_table
from ctr.fileio import read_json, write_json
from ctr.provenance import provenance
from ctr.tasks.mixture import data_dir, read_manifest
from ctr.tasks.registry import HELDOUT_TYPES


# ---- inputs ---------------------------------------------------------------------------
def task_labels(names: Sequence[str], data_dir_arg: str | None = None,
                types_file: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """(task types, datasets, notes). T0 training tasks take both from the manifest; other
    tasks take types from --types-file, HELDOUT_TYPES, else 'unknown'."""
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


# ---- figures --------------------------------------------------------------------------
def plot_value_heatmaps(path: Path, codes: np.ndarray, types: list[str],
                        label: str = "task type") -> None:
    """One subplot per position: task type (or another label) x value (only values in use),
    task counts."""
    L = codes.shape[1]
    tables = [contingency(types, codes[:, p]) for p in range(L)]
    n_types = len(tables[0][0])
    widest = max(len(t[1]) for t in tables)
    cols = max(1, min(L, 5, 40 // max(widest, 1)))  # many values in use: one panel per row
    rows = math.ceil(L / cols)
    fig = _figure((cols * (0.2 * widest + 2.5), rows * (0.25 * n_types + 1.3)))
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
    n = len(names)
    size = min(18.0, max(5.0, 0.16 * n + 3))
    fig = _figure((size + 4, size))
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


# matplotlib is imported inside these two helpers, not at the top, because it is heavy
# (about a second to import) and only the figures need it: reading the inputs and writing
# the markdown do not (`ctr synth`'s tests call read_factors alone).
def _figure(figsize: tuple[float, float]) -> Any:
    """A Figure on an Agg canvas: PNG without a display or pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _patch(colour: Any, label: str) -> Any:
    from matplotlib.patches import Patch
    return Patch(color=colour, label=label)


# ---- the report -----------------------------------------------------------------------
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
    adapted = read_checked_codes(cfg.codes_file, L, K) if cfg.codes_file else {}
    stats = analyze_table(names, codes, types, datasets, K, cfg.min_count, cfg.permutations,
                          cfg.seed)
    if factors:
        stats["factors"] = {f: position_association(codes, labels, cfg.permutations, cfg.seed)
                            for f, labels in factors.items()}
    res: dict[str, Any] = {
        "config": dataclasses.asdict(cfg), "checkpoint": str(folder), "notes": notes,
        "provenance": provenance(),
        "tasks": [{"name": n, "type": t, "dataset": d, "code": table[n]}
                  for n, t, d in zip(names, types, datasets)],
        "statistics": stats,
        "adapted": adapted_report(adapted, names, codes, types, cfg.min_count) if adapted else {},
    }
    if cfg.steer:
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
