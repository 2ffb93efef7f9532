"""`MixtureOptions`: the options that choose, cut and sample a training mixture, declared
once for every command that trains on one (`ctr train`, `ctr free-prompts`);
`ctr.tasks.mixture.load_tasks` reads the tasks they choose."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ctr.config.fields import check_choice, opt


@dataclass(kw_only=True)  # keywords only: a subclass's own first field is not shifted
class MixtureOptions:
    data_dir: str | None = opt(None, "T0 data folder (default: $CTR_DATA_DIR or ../shared/data)")
    train_files: list[str] = opt([], "JSONL task files (task, input, target[, choices]) instead of T0")
    tasks: list[str] = opt([], "only these T0 training tasks (file stems), in this order; default all")
    max_tasks: int | None = opt(None, "use only the first N tasks (sorted by name)")
    tasks_per_type: int | None = opt(None, "use at most N tasks per task type, spread over datasets")
    drop_single_answer: bool = opt(False, "drop tasks whose targets are all the same answer")
    limit_examples: int | None = opt(None, "read at most N examples per task file (quick runs)")
    mixing: Literal["proportional", "balanced"] = opt(
        "proportional", "proportional: by task size with a per-task cap (paper); balanced: tasks uniform")
    task_cap: int = opt(50000, "per-task example cap for proportional mixing")
    max_source_len: int = opt(384, "max source tokens (truncated from the left of the text end)")
    max_target_len: int = opt(32, "max target tokens")

    def check_mixture(self) -> None:
        check_choice("--mixing", self.mixing, ("proportional", "balanced"))
