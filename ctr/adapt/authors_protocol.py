"""The released code's selection protocol, re-created for audits only (`--protocol authors`).

It differs from ours (`ctr.tasks.splits`) in three ways that let test data into selection
(../shared/CTR_SPEC.md section 6):
- zero-label inputs are drawn *per gold label* from the *evaluation* split, and stay in
  the evaluation;
- candidate codes are filtered by how far their predicted answer distribution lies from
  the gold label distribution;
- few-shot shots come from the evaluation split and stay in the evaluation.
Nothing here is used unless a caller passes `protocol="authors"` explicitly.
"""
from __future__ import annotations

from collections import Counter

from ctr.tasks.registry import EvalTask, get_task, load_examples, render_task, task_templates
from ctr.tasks.splits import AdaptSplit, balanced_by_label

PROTOCOLS = ("ours", "authors")
SOURCE = "eval (authors' protocol: label-balanced, kept in the evaluation)"


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")


def label_balanced_eval(task: str | EvalTask, n: int, seed: int = 0, root=None) -> AdaptSplit:
    """n evaluation examples, an equal share per gold label; nothing is excluded later."""
    task = get_task(task)
    picked = balanced_by_label(load_examples(task, "eval", root=root), n, seed)
    return AdaptSplit(task.name, picked, SOURCE, exclude=[])


def gold_distribution(label_indices: list[int]) -> dict[int, float]:
    """Share of each gold answer index (the released code hard-codes these per task)."""
    counts = Counter(label_indices)
    return {k: v / len(label_indices) for k, v in counts.items()}


def distribution_distance(predictions: list[int], gold: dict[int, float]) -> float:
    """Total-variation distance between predicted answer shares and the gold shares."""
    n = len(predictions)
    pred = {k: v / n for k, v in Counter(predictions).items()}
    keys = set(pred) | set(gold)
    return 0.5 * sum(abs(pred.get(k, 0.0) - gold.get(k, 0.0)) for k in keys)


def authors_gold_indices(task, examples, prompts, root=None) -> list[int]:
    """Gold answer index of every selection prompt: only the authors' protocol reads these."""
    gold: dict[tuple[str, int], int] = {}
    by_name = {t.name: t for t in task_templates(task, root)}
    for name in {t for t, _, _ in prompts}:
        instances, _ = render_task(task, by_name[name], examples)
        gold.update({(name, i.index): i.label_index for i in instances})
    return [gold.get((t, index), -1) for t, index, _ in prompts]  # -1: renders without its label only
