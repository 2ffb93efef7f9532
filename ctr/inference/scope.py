"""`EvalScope`: what is evaluated and how it is batched, the options `ctr eval` and the
adaptation commands share."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ctr.config import opt


@dataclass
class EvalScope:
    """What is evaluated and how it is batched: shared by `ctr eval` and the adaptation
    commands (which evaluate after they adapt), so the two cannot drift apart."""

    suite: Literal["t0", "near"] = opt("t0", "task suite: the 11 held-out T0 tasks or near-transfer sets")
    tasks: list[str] = opt([], "task names (data folder names); default: the whole suite")
    templates: list[str] = opt([], "template names to use (default: the original-task templates)")
    max_examples: int | None = opt(None, "seeded subsample of at most N evaluation examples per task")
    seed: int = opt(0, "seed of the subsample (and of selection inputs / shots when adapting)")
    batch_size: int = opt(16, "inputs per scoring batch (halved on out-of-memory)")
    max_input_len: int = opt(1024, "input tokens kept (from the end)")
    data_dir: str | None = opt(None, "data folder (default: $CTR_DATA_DIR or ../shared/data)")

    def scope(self) -> dict[str, Any]:
        """The EvalScope fields of this config, to build another config on the same scope."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalScope)}
