"""The evidence table's command: compile a run folder of scripts/evidence_smollm2.sh into
evidence.md + evidence.json from the JSON the ctr commands wrote (never from their printed
lines); scripts/compile_evidence.py is its command line.

    python scripts/compile_evidence.py [RUNS] [--out DIR] [--n-boot N] [--boot-seed S]
                                       [--coupling comonotone|independent] [--archive DIR]

--archive DIR also copies what the table is compiled from (the JSON, JSONL and TSV files of RUNS
and MODE; no weights, no intermediate checkpoint-N folders: a few MB) to DIR, in RUNS's layout, so
that `compile_evidence.py DIR` rebuilds the same table after RUNS is gone. It holds no weights:
columns still missing need their training runs again, in a run folder of their own.

The code lives in ctr.experiments.evidence (cells, differences, agreement),
ctr.experiments.evidence_bootstrap (the intervals; how they are computed is its docstring) and
ctr.experiments.evidence_report (the Markdown).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

from ctr.experiments.evidence import compile_evidence, strip
from ctr.experiments.evidence_report import markdown


ARCHIVED = re.compile(r".*\.(json|jsonl|tsv)$|^MODE$")
INTERMEDIATE = re.compile(r"^checkpoint-\d+$")


def in_model_backbone(f: Path, runs: Path) -> bool:
    """f lies in the backbone/ folder a trained model saves beside its ctr_config.json (the LM's own
    files, e.g. tokenizer.json; not RUNS/backbone/, the bare backbone's scores)."""
    return any(p.name == "backbone" and (runs / p.parent / "ctr_config.json").exists()
               for p in f.relative_to(runs).parents)


def archive(runs: Path, dest: Path) -> int:
    """Copy the files the table reads (ARCHIVED names outside checkpoint-N folders and model
    backbones); returns how many."""
    n = 0
    for f in sorted(runs.rglob("*")):
        rel = f.relative_to(runs)
        if (not f.is_file() or not ARCHIVED.match(f.name) or any(INTERMEDIATE.match(p) for p in rel.parts)
                or in_model_backbone(f, runs)):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / rel)
        n += 1
    return n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="compile_evidence.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="?", default="runs_evidence")
    ap.add_argument("--out", default="results/evidence/cpu", help="where evidence.md/json go")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--coupling", choices=("comonotone", "independent"), default="comonotone",
                    help="templates of a run without per-example outcomes (the binomial bootstrap)")
    ap.add_argument("--archive", default=None, metavar="DIR",
                    help="also copy the files the table is compiled from to DIR (no weights)")
    args = ap.parse_args(argv)
    if args.archive:  # checked before anything is written
        runs, dest = Path(args.runs).resolve(), Path(args.archive).resolve()
        if dest == runs or runs in dest.parents:
            ap.error(f"--archive {args.archive}: must lie outside RUNS ({args.runs})")
    ev = compile_evidence(Path(args.runs), args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.md").write_text(markdown(ev))
    (out / "evidence.json").write_text(json.dumps(strip(ev), indent=1) + "\n")
    print(f"wrote {out / 'evidence.md'} and {out / 'evidence.json'}")
    if args.archive:
        print(f"archived {archive(runs, dest)} files of {args.runs} to {dest}")
    return ev
