"""Selection-protocol audit (`ctr audit`): how much of a reported gain comes from selecting
on the test data?

On one checkpoint and the same tasks, zero-label Code Ensemble and few-shot Bitwise
Search run twice: under our protocol (selection never reads labels / evaluation examples)
and under the released code's (`--protocol authors`, see `ctr.adapt.authors_protocol`). Each
chosen code is then scored on
- its own selection examples (labels read only now, for the audit),
- a disjoint set: evaluation examples that neither protocol selected with,
- what the protocol would report: ours the disjoint set, the authors' the evaluation
  subsample with their selection examples left in.
Optimism = accuracy on the selection examples - accuracy on the disjoint examples.

Each row is appended to `audit.jsonl` in the output folder as soon as it is measured (with
the run's provenance), so a run cut short keeps its finished rows as data; `audit.json` and
`audit.md` follow at the end.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ctr.config import opt
from ctr.tasks.registry import get_task, load_examples
from ctr.inference.evaluate import EvalConfig, eval_templates, score_templates, seeded_subsample
from ctr.adapt.few_shot import FewShotConfig, adapt_task
from ctr.fileio import append_jsonl, read_json, read_jsonl, write_json
from ctr.provenance import provenance
from ctr.adapt.code_ensemble import select_code
from ctr.adapt.common import AdaptCommon, prepare_adaptation
from ctr.adapt.zero_label import ZeroLabelConfig

METHODS = ("zero-label", "few-shot")
ROWS_FILE = "audit.jsonl"  # one row per (task, method, protocol), appended as the audit goes


@dataclass
class AuditConfig(AdaptCommon):
    methods: list[str] = opt(list(METHODS), "adaptation methods to audit: zero-label, few-shot")
    n_inputs: int = opt(32, "zero-label selection inputs")
    shots: int = opt(16, "few-shot shots")
    values: Literal["all", "seen"] = opt("seen", "few-shot values per position (see ctr few-shot)")
    max_sweeps: int = opt(1, "few-shot sweeps")
    eval_max_templates: int | None = opt(3, "evaluate with the first N usable templates only")
    max_examples: int | None = opt(200, "disjoint evaluation examples per task (seeded subsample)")
    output_dir: str = opt("runs/audit", "where audit.json and audit.md go")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protocol != "ours":
            raise ValueError("ctr audit runs both protocols itself: do not pass --protocol")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"--methods: unknown {bad}; choose from {METHODS}")


def _method_config(cfg: AuditConfig, method: str, protocol: str) -> AdaptCommon:
    common = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(AdaptCommon)}
    common.update(protocol=protocol, no_eval=True)
    if method == "zero-label":
        return ZeroLabelConfig(**common, n_inputs=cfg.n_inputs)
    return FewShotConfig(**common, shots=cfg.shots, values=cfg.values, max_sweeps=cfg.max_sweeps)


def audit_task(model, name: str, cfg: AuditConfig, candidates, scorer, out,
               prov: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The task's rows; each is also appended to out/audit.jsonl with `prov` (default: now's)."""
    task = get_task(name)
    prov = prov if prov is not None else provenance()
    chosen = []  # (method, protocol, code, selection examples)
    for method in cfg.methods:
        for protocol in ("ours", "authors"):
            mcfg = _method_config(cfg, method, protocol)
            n = cfg.n_inputs if method == "zero-label" else cfg.shots
            split = mcfg.selection_split(task, n, labelled=method == "few-shot")
            if method == "zero-label":
                code = select_code(model, name, mcfg, candidates, scorer, split)["code"]
            else:
                folder = out / f"few_shot_{protocol}"
                folder.mkdir(parents=True, exist_ok=True)
                code = adapt_task(model, name, mcfg, candidates, scorer, folder, split)["code"]
            chosen.append((method, protocol, code, split))
    # disjoint: evaluation examples no protocol selected with
    used = {e.index for *_, s in chosen if not s.source.startswith("train") for e in s.examples}
    pool = [e for e in load_examples(task, "eval", root=cfg.data_dir) if e.index not in used]
    pool = seeded_subsample(pool, cfg.max_examples, cfg.seed)
    ecfg = EvalConfig(model=cfg.checkpoint, **cfg.scope(), max_templates=cfg.eval_max_templates)
    templates, _ = eval_templates(task, ecfg, pool)
    rows = []
    for method, protocol, code, split in chosen:
        def acc(examples):
            return score_templates(model, task, templates, examples, code, scorer, ecfg)["median"]
        on_selection, on_disjoint = acc(split.examples), acc(pool)
        reported = on_disjoint if protocol == "ours" else acc(sorted(pool + list(split.examples),
                                                                      key=lambda e: e.index))
        rows.append({"task": name, "method": method, "protocol": protocol, "code": code,
                     "selection_source": split.source, "selection_examples": len(split.examples),
                     "disjoint_examples": len(pool), "acc_selection": on_selection,
                     "acc_disjoint": on_disjoint, "acc_reported": reported,
                     "optimism": None if on_selection is None or on_disjoint is None
                     else round(on_selection - on_disjoint, 2)})
        append_jsonl(out / ROWS_FILE, {**rows[-1], "provenance": prov})
        print(f"[audit] {name} {method} ({protocol}): selection {on_selection} disjoint {on_disjoint} "
              f"reported {reported}", flush=True)
    return rows


def audit_table(rows: list[dict[str, Any]]) -> str:
    head = ["task", "method", "protocol", "selection examples", "acc on selection",
            "acc on disjoint", "optimism", "reported acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x):
        return "-" if x is None else f"{x:.1f}"
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r['protocol']} | {r['selection_examples']} "
                     f"({r['selection_source'].split(' ')[0]}) | {f(r['acc_selection'])} | "
                     f"{f(r['acc_disjoint'])} | {f(r['optimism'])} | {f(r['acc_reported'])} |")
    for method in dict.fromkeys(r["method"] for r in rows):
        for protocol in ("ours", "authors"):
            sel = [r for r in rows if r["method"] == method and r["protocol"] == protocol
                   and r["optimism"] is not None]
            if sel:
                lines.append(
                    f"| **mean** | {method} | {protocol} | | "
                    f"{statistics.mean(r['acc_selection'] for r in sel):.1f} | "
                    f"{statistics.mean(r['acc_disjoint'] for r in sel):.1f} | "
                    f"**{statistics.mean(r['optimism'] for r in sel):+.1f}** | "
                    f"{statistics.mean(r['acc_reported'] for r in sel):.1f} |")
    return "\n".join(lines)


def audit_markdown(config: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """audit.md: the settings (an AuditConfig as a dict, e.g. audit.json's "config") and the table."""
    c = config
    return (f"Selection-protocol audit: checkpoint `{c['checkpoint']}`, suite {c['suite']}, seed {c['seed']}; "
            f"zero-label {c['n_inputs']} inputs, few-shot {c['shots']} shots ({c['values']} values, "
            f"{c['max_sweeps']} sweep); median accuracy % over the first {c['eval_max_templates']} "
            f"templates. Optimism = acc on selection examples - acc on disjoint evaluation examples.\n\n"
            + audit_table(rows) + "\n")


def read_audit_rows(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(rows, config) of an audit folder: audit.json when the audit finished, else the rows
    it appended to audit.jsonl before it was cut (config None); ([], None) when neither.
    A (task, method, protocol) measured twice (a rerun into the same folder) keeps its last row."""
    folder = Path(folder)
    if (folder / "audit.json").exists():
        res = read_json(folder / "audit.json")
        return res["rows"], res["config"]
    if not (folder / ROWS_FILE).exists():
        return [], None
    last: dict[tuple, dict[str, Any]] = {}
    for r in read_jsonl(folder / ROWS_FILE):
        last.pop(key := (r["task"], r["method"], r["protocol"]), None)
        last[key] = r
    return list(last.values()), None


def run_audit(cfg: AuditConfig) -> dict[str, Any]:
    model, tasks, candidates, scorer, out = prepare_adaptation(cfg)
    prov = provenance()
    rows = [r for name in tasks for r in audit_task(model, name, cfg, candidates, scorer, out, prov)]
    res = {"config": dataclasses.asdict(cfg), "rows": rows, "provenance": prov}
    write_json(out / "audit.json", res)
    (out / "audit.md").write_text(audit_markdown(res["config"], rows))
    print(audit_table(rows))
    return res
