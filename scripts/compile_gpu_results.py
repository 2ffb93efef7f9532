"""Tables from the lent-GPU run (scripts/gpu_run.sh, unpacked into runs/gpu) for results/gpu_h200/.

    python scripts/compile_gpu_results.py [runs/gpu]
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from compile_results import audit_rows_from_log  # scripts/ is on sys.path

runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu")
out = Path("results/gpu_h200")
out.mkdir(parents=True, exist_ok=True)
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


bench = load(runs / "bench_search_fp32.json")
shutil.copy(runs / "bench_search_fp32.json", out / "bench_search_fp32.json")
for name in ("near/zero_shot/results.json", "near/zero_label/results.json", "near/zero_label/zero_label.json",
             "s1/code_table.json", "s1/metrics.jsonl", "s1/train_config.json"):
    shutil.copy(runs / name, out / name.replace("/", "_"))
dst = out / "analysis_s1"
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(runs / "analysis_s1", dst)
sections = {
    "stage1": stage1(), "t0": t0_rows(), "near": near_table(), "audit": audit_rows_from_log(runs / "log_audit.txt").splitlines(),
    "bench": [f"`search_speedup={bench['search_speedup']:.2f} same_code={str(bench['same_code']).lower()}` "
              f"(batched {bench['batched_seconds']} s, reference {bench['reference_seconds']} s; "
              f"{bench['shots']} shots of {bench['task']}, {bench['values_per_position']} values per position, "
              f"{bench['sweeps']} sweep, fp32, scoring batch {bench['batch_size']})"],
}
(out / "tables.json").write_text(json.dumps(sections, indent=1) + "\n")
for k, v in sections.items():
    print(f"## {k}\n" + "\n".join(v) + "\n")
