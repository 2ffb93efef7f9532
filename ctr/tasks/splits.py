"""Which examples adaptation may look at, kept disjoint from evaluation.

Zero-label selection gets unlabelled inputs; few-shot search gets k labelled shots. Both
come from the task's train split; a task without one (ANLI, HellaSwag, StoryCloze, AG
News) lends a seeded part of its evaluation split, whose indices are then excluded from
evaluation (`exclude` below, passed to `ctr eval --exclude-indices`).
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from ctr.tasks.registry import EvalTask, TaskExample, get_task, load_examples


@dataclass
class AdaptSplit:
    task: str
    examples: list[TaskExample]
    source: str  # "train" or "eval (excluded from evaluation)"
    exclude: list[int] = field(default_factory=list)  # eval indices evaluation must skip


def _pool(task: EvalTask, root) -> tuple[list[TaskExample], str, bool]:
    if task.train_split is not None:
        return load_examples(task, "train", root=root), "train", False
    return load_examples(task, "eval", root=root), "eval (excluded from evaluation)", True


def unlabeled_inputs(task: str | EvalTask, n: int, seed: int = 0, root=None) -> AdaptSplit:
    """n inputs for zero-label selection, drawn without looking at labels."""
    task = get_task(task)
    pool, source, from_eval = _pool(task, root)
    picked = sorted(random.Random(seed).sample(pool, min(n, len(pool))), key=lambda e: e.index)
    return AdaptSplit(task.name, picked, source, [e.index for e in picked] if from_eval else [])


def balanced_by_label(pool: list[TaskExample], k: int, seed: int) -> list[TaskExample]:
    """k examples, label-balanced (round-robin over shuffled label groups), seeded,
    in index order."""
    rng = random.Random(seed)
    groups: dict[str, list[TaskExample]] = defaultdict(list)
    for e in pool:
        groups[str(e.label)].append(e)
    queues = [rng.sample(g, len(g)) for _, g in sorted(groups.items())]
    picked: list[TaskExample] = []
    while len(picked) < min(k, len(pool)):
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop())
    return sorted(picked, key=lambda e: e.index)


def few_shot(task: str | EvalTask, k: int, seed: int = 0, root=None) -> AdaptSplit:
    """k labelled shots, label-balanced, seeded."""
    task = get_task(task)
    pool, source, from_eval = _pool(task, root)
    picked = balanced_by_label(pool, k, seed)
    return AdaptSplit(task.name, picked, source, [e.index for e in picked] if from_eval else [])
