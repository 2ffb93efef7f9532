"""Issue 11, fix 1: the near-suite table before and after one prompt format, side by side.

Before: results/near_suite/cpu/near_smollm2.json (committed, old scorer: stripped input + " " + choice).
After: the same commands (scripts/results_smollm2.sh step 7 columns) rerun on the fixed
code into RUNS/near_cpu/<column>/results.json; their results are copied into
results/near_suite/cpu/format_rerun.json so that the table regenerates from committed data.
Usage: python scripts/compile_format_rerun.py [RUNS]   (default runs_fmt)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ctr.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results/near_suite/cpu"
COLUMNS = [("zero_shot", "backbone zero-shot"), ("multitask", "multi-task prompted baseline"),
           ("zero_label", "CTR zero-label")]
TASKS = ["glue_sst2", "trec", "ag_news"]


def medians(result: dict | None) -> dict[str, float | None]:
    tasks = (result or {}).get("tasks", {})
    return {t: (tasks[t]["median"] if t in tasks else None) for t in TASKS}


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs_fmt")
    before = json.loads((OUT / "near_smollm2.json").read_text())
    out_json = OUT / "format_rerun.json"
    after = json.loads(out_json.read_text())["after"] if out_json.exists() else {}
    for col, _ in COLUMNS:
        path = runs / "near_cpu" / col / "results.json"
        if path.exists():
            after[col] = json.loads(path.read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    out_json.write_text(json.dumps({"after": after, "commit": commit, "provenance": provenance()}, indent=1) + "\n")
    lines = ["| task | " + " | ".join(f"{name}: before / after" for _, name in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    for t in TASKS:
        cells = [f"{fmt(medians(before.get(c))[t])} / {fmt(medians(after.get(c))[t])}" for c, _ in COLUMNS]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    picks = (after.get("zero_label") or {}).get("zero_label", {})
    picked = [f"- {t}: `{', '.join(v.get('from_tasks', ['?']))}` (agreement {v.get('agreement')})"
              for t, v in picks.items()] if isinstance(picks, dict) else []
    (OUT / "format_rerun.md").write_text(
        "# Near suite before / after one prompt format (issue 11, fix 1)\n\n"
        "Same commands, data, seeds and budget as `near_smollm2.md` (24 T0 tasks, 120 x 8, "
        "`--preset cpu-small` as it was then, i.e. the paper's CTR module with the projections "
        "at 0.01 x lr; 50 examples x first 2 templates, median %). Before: the old scorer "
        "(stripped input + `\" \"` + choice, where training saw `\"\\n\"` + target). After: one "
        "rule for training and scoring (`ctr/core/prompt_format.py`; decoder-only answers scored "
        "without the EOS training appends). `-`: not rerun in this session (CPU time).\n\n"
        + table + "\n\n" + ("Codes picked without labels (after):\n\n" + "\n".join(picked) + "\n\n" if picked else "")
        + f"Command: steps 1 and 7 of `scripts/results_smollm2.sh` with `R=runs_fmt` "
        f"(the columns rerun), then `python scripts/compile_format_rerun.py`. "
        f"Commit {commit}; this 2-core CPU (shared with other runs); 2026-11-28.\n")
    print(table)


if __name__ == "__main__":
    main()
