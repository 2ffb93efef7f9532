"""The options that choose, cut and sample a training mixture, as one dataclass: a command
that trains on a mixture inherits them (`ctr free-prompts`), so each is declared once, with
its help text, and means the same in every command (`ctr train` declares the same names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ctr.config import opt
from ctr.tasks.mixture import Task, load_jsonl_tasks, load_t0_tasks


@dataclass
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
        if self.mixing not in ("proportional", "balanced"):
            raise ValueError(f"--mixing must be proportional or balanced, got {self.mixing!r}")

    def load_tasks(self) -> list[Task]:
        """The training tasks these options choose (in memory)."""
        if self.train_files:
            tasks, _ = load_jsonl_tasks(self.train_files, self.drop_single_answer, self.limit_examples)
        else:
            tasks, _ = load_t0_tasks(self.data_dir, self.tasks or None, self.drop_single_answer,
                                     self.limit_examples, self.max_tasks, self.tasks_per_type)
        if not tasks:
            raise ValueError("no training tasks left after loading (--tasks / --train-files)")
        return tasks
