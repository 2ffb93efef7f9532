"""`ctr synth` report: the results.md tables and the code-vs-factor figure from results.json."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ctr.experiments import synth_tasks as st

METHOD_TITLES = {"best_training_code": "best training code", "bitwise_search": "Bitwise Search",
                 "guided_search": "guided search", "random_code": "random code",
                 "prompt_tuning": "prompt tuning"}


def markdown(res: dict[str, Any]) -> str:
    cfg, s = res["config"], res["summary"]
    methods = tuple(METHOD_TITLES)  # the held-out methods, in table order
    factors = ", ".join(f"{f} ({len(v)})" for f, v in res["suite"]["primitives"].items())
    lines = [f"# Synthetic compositional suite: {cfg['arch']}", "",
             f"{len(res['suite']['train'])} training and {len(res['suite']['heldout'])} held-out "
             f"combinations of {factors}. "
             f"Backbone trained from scratch with the codes: hidden {cfg['hidden']}, {cfg['layers']} "
             f"layers, L = {cfg['code_length']}, K = {cfg['codebook_size']}, {cfg['steps']} steps x "
             f"{cfg['batch_size']}; {cfg['shots']} shots, {cfg['eval_examples']} evaluation inputs "
             f"per combination; seeds {cfg['seeds']}, split seed {cfg['split_seed']}. "
             f"Wall time {res['wall_seconds']:.0f} s on {res['hardware']['cpu_count']} CPU cores "
             f"({res['hardware']['threads']} torch thread(s)).", "",
             "## Exact match on held-out combinations (greedy generation)", "",
             "| held-out combination | " + " | ".join(METHOD_TITLES[m] for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for n, accs in s["heldout"].items():
        lines.append(f"| {n} | " + " | ".join(f"{accs[m]:.2f}" for m in methods) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{s['mean'][m]:.2f}**" for m in methods) + " |")
    lines += ["", f"Training combinations with their own codes: mean exact match "
                  f"{s['mean']['own_code']:.2f} (lowest {s['train_min']:.2f}). Bitwise Search beats "
                  f"the random code on {s['search_beats_random']} of {len(s['heldout'])} held-out "
                  "combinations. Random code: the mean over "
                  f"{cfg['random_draws']} draws from the values the search may use ({cfg['values']}).",
              ""]
    if len(res["runs"]) > 1:
        lines += ["Per seed (mean over held-out combinations): " + "; ".join(
            f"seed {r['seed']}: " + ", ".join(
                f"{METHOD_TITLES[m]} {statistics.mean(h['accuracy'][m] for h in r['heldout'].values()):.2f}"
                for m in methods) for r in res["runs"]) + ".", ""]
    cost = s.get("search_cost")
    if cost:
        ex, gd = cost["bitwise_search"], cost["guided_search"]
        fmt = lambda x, spec: "-" if x is None else format(x, spec)
        lines += ["## Exhaustive vs gradient-guided search (mean per held-out combination and seed)", "",
                  f"Guided: the {cfg['guide_top']} values per position with the best first-order "
                  "estimate (one backward pass per code) are scored exactly. Recall: how often the "
                  "exhaustive search's best value at a position was among them (ranked at the "
                  "exhaustive search's code).", "",
                  "| search | codes scored | seconds | final shot loss | recall |", "|---|---:|---:|---:|---:|",
                  f"| exhaustive (Bitwise Search) | {ex['evaluations']:.1f} | {ex['seconds']:.2f} | "
                  f"{ex['objective']:.3f} | - |",
                  f"| gradient-guided | {gd['evaluations']:.1f} | {gd['seconds']:.2f} | "
                  f"{gd['objective']:.3f} | {fmt(gd['recall'], '.2f')} |", ""]
    lines += ["## Search details (first seed)", "",
              "| held-out combination | start (best training task) | searched code | new code? "
              "| objective start -> end | sweeps |", "|---|---|---|---|---|---|"]
    first = res["runs"][0]
    for n, h in first["heldout"].items():
        lines.append(f"| {n} | {h['start_tasks'][0]} `{h['start_code']}` | `{h['search_code']}` | "
                     f"{'no' if h['search_code_is_training_code'] else 'yes'} | "
                     f"{h['start_objective']:.2f} -> {h['search_objective']:.2f} | {h['sweeps']} |")
    lines += ["", "## Codes vs factors (first seed)", "",
              f"{first['distinct_codes']} distinct codes for {len(first['code_table'])} training "
              "combinations. Per position: normalised mutual information (NMI) between the code "
              "value and each factor's primitive, with purity, MI and its chance level (mean over "
              f"{cfg['permutations']} label shuffles) in bits.", "",
              "| factor | " + " | ".join(f"pos {p}" for p in range(cfg["code_length"]))
              + " | best position: purity, MI (chance, p) |", "|---|" + "---:|" * (cfg["code_length"] + 1)]
    for f, a in first["alignment"].items():
        b = a["best_position"]
        lines.append(f"| {f} | " + " | ".join(f"{r['nmi']:.2f}" for r in a["positions"])
                     + f" | {b['position']}: {b['purity']:.2f}, {b['mi_bits']:.2f} "
                       f"({b['mi_chance_bits']:.2f}, p {b['mi_p_value']:.3f}) |")
    specific = [v["text"] for a in first["alignment"].values() for v in a["specific_values"][:2]]
    if specific:
        lines += ["", "Most primitive-specific code values:", ""] + [f"- {t}." for t in specific]
    lines += ["", "Figure: `code_factors.png` (NMI per factor and position; code-value usage by "
                  "primitive).", "", "## Wall time per seed (s)", "",
              "| seed | train | training-combination eval | held-out adaptation |", "|---|---:|---:|---:|"]
    for r in res["runs"]:
        t = r["times"]
        lines.append(f"| {r['seed']} | {t['train_s']} | {t['eval_train_s']} | {t['heldout_s']} |")
    return "\n".join(lines) + "\n"


def plot_alignment(path: Path, table: dict[str, list[int]], alignment: dict[str, Any]) -> None:
    """Left: NMI per factor x position. Right: primitives x (position, value) usage counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    names = list(table)
    codes = np.array([table[n] for n in names])
    L = codes.shape[1]
    factors = [st.parse_task_name(n) for n in names]
    rows = [(f, v) for f in st.FACTOR_NAMES for v in sorted({x[f] for x in factors})]
    cols = [(p, int(v)) for p in range(L) for v in np.unique(codes[:, p])]
    usage = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for fac, code in zip(factors, codes):
        for j, (p, v) in enumerate(cols):
            if code[p] == v:
                for i, (f, prim) in enumerate(rows):
                    usage[i, j] += fac[f] == prim
    nmi = np.array([[r["nmi"] for r in alignment[f]["positions"]] for f in st.FACTOR_NAMES])
    fig = Figure(figsize=(max(8.0, 3 + 0.2 * len(cols)), 7.5), layout="constrained")
    FigureCanvasAgg(fig)  # Agg: no display, no pyplot state
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 2.2])
    left, right = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, :])
    im = left.imshow(nmi, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), x in np.ndenumerate(nmi):
        left.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=7,
                  color="white" if x < 0.6 else "black")
    left.set_xticks(range(L), [str(p) for p in range(L)])
    left.set_yticks(range(len(st.FACTOR_NAMES)), list(st.FACTOR_NAMES))
    left.set_xlabel("code position")
    left.set_title("NMI(value, factor)", fontsize=9)
    fig.colorbar(im, ax=left, shrink=0.9)
    im2 = right.imshow(usage, cmap="magma_r", aspect="auto", interpolation="nearest")
    right.set_xticks(range(len(cols)), [f"{p}:{v}" for p, v in cols], rotation=90, fontsize=6)
    right.set_yticks(range(len(rows)), [f"{f}-{v}" for f, v in rows], fontsize=7)
    for j in range(1, len(cols)):  # a line between positions
        if cols[j][0] != cols[j - 1][0]:
            right.axvline(j - 0.5, color="grey", lw=0.8)
    right.set_xlabel("position:value")
    right.set_title("training combinations using each value, by primitive", fontsize=9)
    fig.colorbar(im2, ax=right, shrink=0.7, label="combinations")
    fig.savefig(path, dpi=110)
