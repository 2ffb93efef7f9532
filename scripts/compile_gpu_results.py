"""Tables from the lent-GPU run of session 2 (scripts/gpu_run.sh on an H200, unpacked into runs/gpu),
from the JSON / JSONL it wrote: results/gpu_run/h200/tables.json, and the run's data copied into
results/<experiment>/h200/ (stage1, near_suite, bench_search, analysis_s1).

    python scripts/compile_gpu_results.py [runs/gpu]
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from compile_results import audit_rows_table  # scripts/ is on sys.path
from ctr.adapt.audit import read_audit_rows
from ctr.fileio import read_jsonl
from ctr.provenance import provenance

runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu")
out = Path("results/gpu_run/h200")
OUT = {e: Path(f"results/{e}/h200") for e in ("stage1", "near_suite", "bench_search", "analysis_s1")}
for d in [out, *OUT.values()]:
    d.mkdir(parents=True, exist_ok=True)
# Session 2's audit was cut before audit.json (and before audit.jsonl existed): its rows,
# recovered once from its log, are committed data.
LOG_ROWS = Path("results/audit/h200/log_rows.jsonl")
load = lambda p: json.loads(Path(p).read_text())


def stage1() -> list[str]:
    m = [json.loads(x) for x in (runs / "s1/metrics.jsonl").read_text().splitlines()]
    cfg, table = load(runs / "s1/train_config.json"), load(runs / "s1/code_table.json")
    return [f"- tasks: {len(table)} T0 training tasks (`--tasks-per-type {cfg['tasks_per_type']} "
            f"--drop-single-answer`), {len(set(map(tuple, table.values())))} distinct codes",
            f"- {cfg['steps']} steps x {cfg['batch_size']} examples, source {cfg['max_source_len']} / target "
            f"{cfg['max_target_len']} tokens, lr {cfg['lr']} (projections x{cfg['projection_lr_scale']}), bf16 "
            f"autocast, seed {cfg['seed']}; {m[-1]['step_time']:.2f} s per step",
            f"- LM loss {m[0]['lm_loss']:.2f} -> {m[-1]['lm_loss']:.2f}, VQ loss {m[0]['vq_loss']:.2f} -> "
            f"{m[-1]['vq_loss']:.2f} (logged batches), {m[-1]['distinct_values']} of 128 values in use, "
            f"per-position perplexity {min(m[-1]['code_perplexity']):.0f}-{max(m[-1]['code_perplexity']):.0f}"]


def near_table() -> list[str]:
    zs, zl = load(runs / "near/zero_shot/results.json"), load(runs / "near/zero_label/results.json")
    sel = load(runs / "near/zero_label/zero_label.json")["tasks"]
    lines = ["| task | examples | templates | backbone zero-shot | CTR zero-label | code picked from | "
             "agreement (best / 2nd) |", "|---|---|---|---|---|---|---|"]
    for t, r in zs["tasks"].items():
        z, s = zl["tasks"][t], sel[t]
        second = s["ranked"][1]["agreement"] if len(s["ranked"]) > 1 else float("nan")
        n_t = sum(1 for v in r["templates"].values() if v["n"])
        lines.append(f"| {t} | {r['examples']} / {z['examples']} | {n_t} | {r['median']:.1f} | {z['median']:.1f} | "
                     f"`{s['from_tasks'][0]}` | {s['agreement']:.3f} / {second:.3f} |")
    return lines


def t0_rows() -> list[str]:
    lines = ["| task | examples (full set) | templates | median acc | mean acc | seconds |", "|---|---|---|---|---|---|"]
    for f in sorted((runs / "t0_zeroshot").glob("*/results.json")):
        res = load(f)
        for t, r in res["tasks"].items():
            n_t = sum(1 for v in r["templates"].values() if v["n"])
            lines.append(f"| {t} | {r['examples']} | {n_t} | {r['median']:.1f} | {r['mean']:.1f} | {res['seconds']} |")
    return lines


def audit_rows() -> list[str]:
    """The audit step's rows (runs/audit/TASK: audit.json, or audit.jsonl when cut), else the
    session's rows recovered from its log."""
    rows = [r for d in sorted((runs / "audit").glob("*")) if d.is_dir() for r in read_audit_rows(d)[0]]
    if rows:
        return audit_rows_table(rows, "(the rows each task's audit wrote)").splitlines()
    return audit_rows_table(read_jsonl(LOG_ROWS), "(cut before its end: rows from its log)").splitlines()


bench = load(runs / "bench_search_fp32.json")
shutil.copy(runs / "bench_search_fp32.json", OUT["bench_search"] / "bench_search_fp32.json")
for name in ("near/zero_shot/results.json", "near/zero_label/results.json", "near/zero_label/zero_label.json",
             "s1/code_table.json", "s1/metrics.jsonl", "s1/train_config.json"):
    shutil.copy(runs / name, OUT["stage1" if name.startswith("s1/") else "near_suite"] / name.replace("/", "_"))
dst = OUT["analysis_s1"]
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(runs / "analysis_s1", dst)
sections = {
    "stage1": stage1(), "t0": t0_rows(), "near": near_table(), "audit": audit_rows(),
    "bench": [f"`search_speedup={bench['search_speedup']:.2f} same_code={str(bench['same_code']).lower()}` "
              f"(batched {bench['batched_seconds']} s, reference {bench['reference_seconds']} s; "
              f"{bench['shots']} shots of {bench['task']}, {bench['values_per_position']} values per position, "
              f"{bench['sweeps']} sweep, fp32, scoring batch {bench['batch_size']})"],
}
(out / "tables.json").write_text(json.dumps({**sections, "provenance": provenance()}, indent=1) + "\n")
for k, v in sections.items():
    print(f"## {k}\n" + "\n".join(v) + "\n")
