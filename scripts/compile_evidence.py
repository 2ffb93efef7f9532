"""Compile the evidence table of scripts/evidence_smollm2.sh into results/evidence/cpu/evidence.md
+ evidence.json (`--help` for the options; the code is ctr.experiments.evidence_command).

    python scripts/compile_evidence.py [RUNS] [--out DIR] [--archive DIR] ...
"""
import sys

from ctr.experiments.evidence_command import main

if __name__ == "__main__":
    main(sys.argv[1:])
