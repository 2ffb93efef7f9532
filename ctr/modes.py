"""What one training run learns: `TrainMode`, the value of `ctr train --mode`."""
from __future__ import annotations

from enum import Enum


class TrainMode(str, Enum):
    """What one `ctr train` run learns (`--mode`). LoRA (`--lora`) is a property of the modes
    that train the LM. The flags --stage, --no-codes and --joint name the same modes."""

    CODEBOOK = "codebook"  # stage 1: task encodings and codebook, the LM frozen
    FINETUNE = "finetune"  # stage 2: everything, from the stage-1 model of --init-from
    JOINT = "joint"        # fresh codes and the LM trained together from the first step
    BASELINE = "baseline"  # the LM alone, no codes: the multi-task prompted baseline

    @property
    def stage(self) -> int:
        return 1 if self is TrainMode.CODEBOOK else 2

    @property
    def uses_codes(self) -> bool:
        return self is not TrainMode.BASELINE

    @classmethod
    def from_flags(cls, stage: int, no_codes: bool, joint: bool) -> "TrainMode":
        """The mode the older flags name; a combination that names none is refused."""
        if stage not in (1, 2):
            raise ValueError(f"--stage must be 1 or 2, got {stage}")
        if no_codes and joint:
            raise ValueError("--joint trains fresh codes with the backbone and --no-codes trains "
                             "the backbone without codes: pass one (or --mode joint / baseline)")
        if stage == 1 and (no_codes or joint):
            flag = "--no-codes" if no_codes else "--joint"
            raise ValueError(f"{flag} trains the backbone, which stage 1 keeps frozen: use it "
                             f"with --stage 2 (or --mode {'baseline' if no_codes else 'joint'})")
        if stage == 1:
            return cls.CODEBOOK
        return cls.BASELINE if no_codes else cls.JOINT if joint else cls.FINETUNE
