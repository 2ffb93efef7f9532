"""Issue 11, fix 1: the CPU tables before and after one prompt format, side by side.

Before: the committed results (old scorer: stripped input + " " + choice, where training
saw "\\n" + target): results/near_suite/cpu/near_smollm2.json and results/adaptation/cpu/*.json.
After: the same commands of scripts/results_smollm2.sh (steps 2-4 and 7) rerun on the fixed
code into RUNS/; their results are copied into results/<experiment>/cpu/format_rerun.json so
that the tables regenerate from committed data.
Usage: python scripts/compile_format_rerun.py [RUNS]   (default runs_fmt)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ctr.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
# column -> (title, run folder of the "after" results, file inside it, key of a few-shot run)
FEW = "few_shot.json"
NEAR = {"out": ROOT / "results/near_suite/cpu", "tasks": ["glue_sst2", "trec", "ag_news"],
        "title": "Near suite", "columns": {
            "zero_shot": ("backbone zero-shot", "near_cpu/zero_shot", "results.json", None),
            "multitask": ("multi-task prompted baseline", "near_cpu/multitask", "results.json", None),
            "zero_label": ("CTR zero-label", "near_cpu/zero_label", "results.json", None),
            "bitwise": ("CTR few-shot (Bitwise)", "near_cpu/few_shot", "results.json", "bitwise"),
            "discrete": ("discrete only", "near_cpu/few_shot", "results.json", "discrete"),
            "prompt_tuning": ("prompt tuning", "near_cpu/few_shot", "results.json", "prompt_tuning")}}
ADAPT = {"out": ROOT / "results/adaptation/cpu",
         "tasks": ["super_glue_rte", "super_glue_copa", "super_glue_cb"],
         "title": "RTE / COPA / CB adaptation", "columns": {
             "zero_shot": ("backbone zero-shot", "zs3_smollm2", "results.json", None),
             "zero_label": ("CTR zero-label", "zl_smollm2", "results.json", None),
             "bitwise": ("CTR few-shot (Bitwise)", "fs_smollm2", "results.json", "bitwise"),
             "discrete": ("discrete only", "fs_smollm2", "results.json", "discrete"),
             "prompt_tuning": ("prompt tuning", "fs_smollm2", "results.json", "prompt_tuning")}}


def read(path: Path, run: str | None) -> dict | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data.get("runs", {}).get(run) if run else data


def before_near(col: str, run: str | None) -> dict | None:
    data = json.loads((NEAR["out"] / "near_smollm2.json").read_text())
    return (data.get("few_shot") or {}).get("runs", {}).get(run) if run else data.get(col)


def before_adapt(col: str, run: str | None) -> dict | None:
    name = {"zero_shot": "zero_shot3.json", "zero_label": "zero_label.json"}.get(col, FEW)
    return read(ADAPT["out"] / name, run)


def median(result: dict | None, task: str) -> str:
    tasks = (result or {}).get("tasks", {})
    return f"{tasks[task]['median']:.1f}" if task in tasks else "-"


def compile_table(spec: dict, before, runs: Path) -> str:
    out_json = spec["out"] / "format_rerun.json"
    after = json.loads(out_json.read_text())["after"] if out_json.exists() else {}
    for col, (_, folder, name, run) in spec["columns"].items():
        found = read(runs / folder / name, run)
        if found is not None:
            after[col] = found
    out_json.write_text(json.dumps({"after": after, "provenance": provenance()}, indent=1) + "\n")
    cols = spec["columns"]
    lines = ["| task | " + " | ".join(f"{title}: before / after" for title, *_ in cols.values()) + " |",
             "|---|" + "---|" * len(cols)]
    for t in spec["tasks"]:
        cells = [f"{median(before(c, v[3]), t)} / {median(after.get(c), t)}" for c, v in cols.items()]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs_fmt")
    near = compile_table(NEAR, before_near, runs)
    adapt = compile_table(ADAPT, before_adapt, runs)
    commit = (provenance()["commit"] or "?")[:7]
    text = (
        "# CPU tables before / after one prompt format (issue 11, fix 1)\n\n"
        "Same commands, data, seeds, checkpoints' recipe and budget as `near_smollm2.md` and "
        "`../../adaptation/cpu/adaptation_smollm2.md` (stage 1: 24 T0 tasks, 120 x 8, `--preset "
        "cpu-small` as it was then, i.e. the paper's CTR module with the projections at 0.01 x lr; "
        "near suite: 50 examples x first 2 templates; RTE/COPA/CB: 50 examples x all original-task "
        "templates; median %). Before: the old scorer (stripped input + `\" \"` + choice, where "
        "training saw `\"\\n\"` + target). After: one rule for training and scoring "
        "(`ctr/core/prompt_format.py`; decoder-only answers scored without the EOS training "
        "appends). 50 examples carry about +-7 points of sampling noise. `-`: not rerun.\n\n"
        f"## Near suite\n\n{near}\n\n## RTE / COPA / CB adaptation\n\n{adapt}\n\n"
        "Command: `bash scripts/results_smollm2.sh runs_fmt` (steps 1-4 and 7; the stage-1 and "
        "multi-task checkpoints trained once on the fixed code), then "
        f"`python scripts/compile_format_rerun.py runs_fmt`. Commit {commit}; the project's 2-core "
        "CPU (shared with other jobs); 2026-11-28.\n")
    (NEAR["out"] / "format_rerun.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
