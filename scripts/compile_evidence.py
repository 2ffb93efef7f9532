"""Compile the evidence table of scripts/evidence_smollm2.sh ("Make the codes matter", item 3)
from the JSON the ctr commands wrote (never from their printed lines) into
results/evidence/cpu/evidence.md + evidence.json.

    python scripts/compile_evidence.py [RUNS] [--out DIR] [--n-boot N] [--boot-seed S]
                                       [--coupling comonotone|independent]

The code lives in ctr.experiments.evidence (cells, differences, agreement),
ctr.experiments.evidence_bootstrap (the intervals; how they are computed is its docstring) and
ctr.experiments.evidence_report (the Markdown).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ctr.experiments.evidence import compile_evidence, strip
from ctr.experiments.evidence_report import markdown


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="?", default="runs_evidence")
    ap.add_argument("--out", default="results/evidence/cpu", help="where evidence.md/json go")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--coupling", choices=("comonotone", "independent"), default="comonotone",
                    help="templates of a run without per-example outcomes (the binomial bootstrap)")
    args = ap.parse_args(argv)
    ev = compile_evidence(Path(args.runs), args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.md").write_text(markdown(ev))
    (out / "evidence.json").write_text(json.dumps(strip(ev), indent=1) + "\n")
    print(f"wrote {out / 'evidence.md'} and {out / 'evidence.json'}")
    return ev


if __name__ == "__main__":
    main(sys.argv[1:])
