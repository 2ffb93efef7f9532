"""The selection-protocol audit of the 91-task GPU codebook as one table, from data only:
per-task `ctr audit` folders from `scripts/gpu_run.sh audit` (unpacked into runs/gpu_h100/audit;
audit.json, or the audit.jsonl rows of a task its time limit cut), the rows an earlier, cut
H200 run left only in its log (recovered once into results/audit/h200/log_rows.jsonl, same
checkpoint and settings), and the tasks the device time missed, run on the CPU with one
selection template and 100 disjoint examples (runs/audit_cpu_gpucodebook).

    python scripts/compile_audit_gpu.py
Writes results/audit/h100/audit.json and audit.md.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ctr.adapt.audit import audit_table, read_audit_rows
from ctr.fileio import read_jsonl
from ctr.provenance import provenance
from ctr.tasks.registry import get_task, list_tasks

FOLDERS = {"H100": Path("runs/gpu_h100/audit"), "CPU": Path("runs/audit_cpu_gpucodebook")}
old_rows = Path("results/audit/h200/log_rows.jsonl")
out = Path("results/audit/h100")
out.mkdir(parents=True, exist_ok=True)

rows: list[dict] = []
configs = {}
for hardware, folder in FOLDERS.items():
    for task_dir in sorted(p for p in folder.glob("*") if p.is_dir()):
        task_rows, config = read_audit_rows(task_dir)
        if config is not None:
            configs.setdefault(hardware, config)
        rows += [dict(r, hardware=hardware) for r in task_rows]
done = {r["task"] for r in rows}
if old_rows.exists():  # the H200 run that was cut after ANLI R1/R2 wrote only log lines
    rows += [dict({k: v for k, v in r.items() if k != "provenance"}, hardware="H200",
                  selection_examples=32 if r["method"] == "zero-label" else 16,
                  selection_source="eval (from the run's log)")
             for r in read_jsonl(old_rows) if r["task"] not in done]
suite_of = {r["task"]: get_task(r["task"]).suite for r in rows}
missing = [t.name for t in list_tasks("t0") + list_tasks("near") if t.name not in suite_of]
by_hw = lambda hw: sorted({r["task"] for r in rows if r["hardware"] == hw})
rows.sort(key=lambda r: (suite_of[r["task"]], r["task"]))


def summary(sel_rows: list[dict]) -> list[str]:
    """Mean over tasks, with the standard error across tasks, of optimism and of the gap
    between what each protocol reports."""
    lines = ["| method | protocol | tasks | optimism (mean +- s.e.) | reported acc | acc on disjoint |",
             "|---|---|---|---|---|---|"]
    for method in ("zero-label", "few-shot"):
        for protocol in ("ours", "authors"):
            rs = [r for r in sel_rows if r["method"] == method and r["protocol"] == protocol]
            if len(rs) < 2:
                continue
            opt = [r["optimism"] for r in rs]
            se = statistics.stdev(opt) / len(opt) ** 0.5
            lines.append(f"| {method} | {protocol} | {len(rs)} | {statistics.mean(opt):+.1f} +- {se:.1f} | "
                         f"{statistics.mean(r['acc_reported'] for r in rs):.1f} | "
                         f"{statistics.mean(r['acc_disjoint'] for r in rs):.1f} |")
    return lines


md = ["# Selection-protocol audit, SmolLM2-135M-Instruct with the 91-task GPU codebook (issue 5, part 3)", "",
      "Checkpoint: the H200 stage-1 run (`results/stage1/h200/`: 91 T0 training tasks, 400 steps x 64). "
      "Zero-label: 32 inputs x 2 templates; few-shot: 16 shots x 2 templates, values seen in training codes, "
      "1 sweep; every chosen code scored on its own selection examples and on up to 300 evaluation examples "
      "that neither protocol selected with (median over the first 3 templates). Optimism = accuracy on the "
      "selection examples - accuracy on the disjoint examples. Ours reads no labels for zero-label and selects "
      "on the train split where the task has one (else on validation examples it then excludes); "
      "`--protocol authors` selects on label-balanced evaluation examples, filters zero-label candidates by "
      "the gold label shares and keeps its selection examples in the evaluation.", "",
      "Hardware: one H100 (session 3) for " + ", ".join(by_hw("H100")) + "; ANLI R1/R2 come from the log of "
      "the H200 run of session 2 that was cut after them (same checkpoint and settings). Seed 0. Command per "
      "task: `ctr audit --checkpoint runs/s1 --suite SUITE --tasks TASK --n-inputs 32 --shots 16 "
      "--max-templates 2 --eval-max-templates 3 --max-examples 300 --batch-size 128` (`scripts/gpu_run.sh "
      "audit`). " + (("The tasks the device time missed ran on the project's CPU (2 cores), with one "
      "selection template and 100 disjoint examples (`--max-templates 1 --max-examples 100 --batch-size 32`): "
      + ", ".join(by_hw("CPU")) + ". ") if by_hw("CPU") else "") + (("Not run: " + ", ".join(missing) + ".")
      if missing else ""), "",
      "With 16-32 selection examples one example moves a selection accuracy by 3-6 points, so single rows "
      "are noisy; the summary pools tasks.", ""]
for suite, title in (("t0", "T0 held-out tasks"), ("near", "near-transfer tasks")):
    sel_rows = [r for r in rows if suite_of[r["task"]] == suite]
    md += [f"## {title}: summary over tasks", ""] + summary(sel_rows) + [""]
md += ["## All tasks, per row (means at the end)", "", audit_table(rows), ""]
(out / "audit.md").write_text("\n".join(md))
(out / "audit.json").write_text(json.dumps({"configs": configs, "rows": rows, "provenance": provenance()},
                                          indent=1) + "\n")
print("\n".join(md))
