"""Exhaustive vs gradient-guided Bitwise Search on `ctr synth`'s trained checkpoints, for several
--guide-top values (results/synth/cpu/guide_sweep_ARCH.{json,md}); the code is
ctr.experiments.synth_guide_sweep (`--help` for the options).

    python scripts/synth_guide_sweep.py --arch llama [--tops 1 2 3 5 8 11 15]
"""
import sys

from ctr.experiments.synth_guide_sweep import main

if __name__ == "__main__":
    main(sys.argv[1:])
