"""The demo's table: columns scored on one held-out task, each with a 95% bootstrap interval over
examples, the paired differences to the backbone and CTR minus the baseline, and what the
codes did.

A column is one task record of `ctr eval`'s results.json (per template: accuracy, the index of
every scored example and whether it was right). Its statistic is the median accuracy over
templates; its interval comes from the evidence table's bootstrap
(`ctr.experiments.evidence_bootstrap`): every replicate draws examples (Poisson(1) per example
index, from one seed shared by all columns), so two columns that scored the same examples see
the same draws and their difference is paired over examples.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Any

import numpy as np

from ctr.experiments.evidence_bootstrap import (LEVEL, interval, key_seed, median_of, resample_examples,
                                                template_counts, template_outcomes)

N_BOOT = 2000


@dataclass
class Column:
    key: str  # short name: backbone, baseline, ctr_s1, ctr_s2
    label: str  # the row's words
    source: str  # where the model came from (a release name, a run folder, a backbone)
    record: dict[str, Any]  # the task's record of ctr eval's results (templates with outcomes)
    selection: dict[str, Any] | None = None  # the Code Ensemble's choice (zero-label columns)


def replicates(columns: list[Column], task: str, n_boot: int = N_BOOT, boot_seed: int = 0
               ) -> dict[str, np.ndarray]:
    """[n_boot] bootstrap replicates of each column's median over templates, all columns drawn
    from the same example weights (paired)."""
    base = key_seed(boot_seed, "demo", task)
    out = {}
    for c in columns:
        outcomes = template_outcomes(c.record, f"{c.label}: {task}")
        if outcomes is None:
            raise ValueError(f"{c.label}: {task}: results without per-example outcomes")
        out[c.key] = resample_examples(outcomes, base, n_boot)
    return out


def point(c: Column, task: str) -> float:
    return median_of(template_counts(c.record, f"{c.label}: {task}"))


def _fmt(x: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(x)} [{f.format(lo)}, {f.format(hi)}]"


def table(columns: list[Column], task: str, reference: str, pairs: list[tuple[str, str]],
          n_boot: int = N_BOOT, boot_seed: int = 0) -> dict[str, Any]:
    """Every column's accuracy and interval, its difference to `reference` (paired), and the
    differences of `pairs` ((a, b): a - b), as numbers."""
    reps = replicates(columns, task, n_boot, boot_seed)
    by_key = {c.key: c for c in columns}
    rows = []
    for c in columns:
        lo, hi = interval(reps[c.key])
        row = {"key": c.key, "label": c.label, "source": c.source, "accuracy": point(c, task),
               "ci": [lo, hi], "examples": c.record.get("examples"),
               "templates": {n: t["accuracy"] for n, t in c.record["templates"].items() if t.get("n")}}
        if c.key != reference:
            d = reps[c.key] - reps[reference]
            row["vs_reference"] = point(c, task) - point(by_key[reference], task)
            row["vs_reference_ci"] = list(interval(d))
            ref_lo, ref_hi = interval(reps[reference])
            row["overlaps_reference"] = not (lo > ref_hi or hi < ref_lo)
        rows.append(row)
    diffs = []
    for a, b in pairs:
        d = reps[a] - reps[b]
        diffs.append({"a": a, "b": b, "label": f"{by_key[a].label} - {by_key[b].label}",
                      "diff": point(by_key[a], task) - point(by_key[b], task), "ci": list(interval(d))})
    return {"task": task, "level": LEVEL, "n_boot": n_boot, "reference": reference, "rows": rows,
            "differences": diffs, "codes": [codes_row(c) for c in columns if c.selection]}


def codes_row(c: Column) -> dict[str, Any]:
    """What the Code Ensemble did for one zero-label column."""
    s = c.selection
    ranked = s["ranked"]
    return {"key": c.key, "label": c.label, "code": s["code"], "tasks": s["from_tasks"],
            "agreement": s["agreement"], "mean_agreement": mean(r["agreement"] for r in ranked),
            "candidates": len(ranked), "inputs": s["inputs"], "templates": s["templates"],
            "source": s["selection_source"],
            "runners_up": [{"tasks": r["tasks"], "agreement": r["agreement"]} for r in ranked[1:3]]}


def markdown(t: dict[str, Any], title: str) -> str:
    """The table (and the code section) as Markdown."""
    ref = next(r for r in t["rows"] if r["key"] == t["reference"])
    pct = round(100 * t["level"])
    lines = [f"## {title}", "",
             f"Accuracy %: median over templates [{pct}% bootstrap interval over examples, "
             f"{t['n_boot']} replicates]; differences paired over the same examples.", "",
             f"| model | from | accuracy [{pct}%] | vs {ref['label']} [{pct}%] | interval overlaps "
             f"{ref['label']}'s |", "|---|---|---:|---:|---|"]
    for r in t["rows"]:
        vs = (_fmt(r["vs_reference"], *r["vs_reference_ci"], signed=True) if "vs_reference" in r else "-")
        overlap = ("yes" if r["overlaps_reference"] else "no") if "overlaps_reference" in r else "-"
        lines.append(f"| {r['label']} | {r['source']} | {_fmt(r['accuracy'], *r['ci'])} | {vs} | {overlap} |")
    if t["differences"]:
        lines += ["", "| difference | points [95%, paired] |", "|---|---:|"]
        lines += [f"| {d['label']} | {_fmt(d['diff'], *d['ci'], signed=True)} |" for d in t["differences"]]
    templates = list(t["rows"][0]["templates"])
    lines += ["", "Per template (accuracy %):", "",
              "| model | " + " | ".join(templates) + " |", "|---|" + "---:|" * len(templates)]
    lines += [f"| {r['label']} | " + " | ".join(f"{r['templates'].get(n, float('nan')):.1f}" for n in templates)
              + " |" for r in t["rows"]]
    if t["codes"]:
        lines += ["", "## What the codes did", "",
                  "Code Ensemble, no label read: each training task's code answers the unlabelled "
                  "selection inputs; the code that agrees most with the codes' majority vote is chosen.", "",
                  "| model | code chosen | its training task | its agreement | mean agreement of the "
                  "training codes | next best | selection prompts (template; split) |", "|---|---|---|---:|---:|---|---|"]
        for c in t["codes"]:
            nxt = "; ".join(f"{', '.join(r['tasks'])} {r['agreement']:.2f}" for r in c["runners_up"])
            lines.append(f"| {c['label']} | {','.join(map(str, c['code']))} | {', '.join(c['tasks'])} | "
                         f"{c['agreement']:.2f} | {c['mean_agreement']:.2f} ({c['candidates']} codes) | {nxt} | "
                         f"{c['inputs']} ({', '.join(c['templates'])}; {c['source']}) |")
    return "\n".join(lines)
