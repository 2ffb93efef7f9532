"""Tokenised training examples, the task mixture sampler and the collator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ctr.tasks.mixture import Task
from ctr.core.adapter import BackboneAdapter, adapter_for
from ctr.core.prompt_format import PromptEncoder


@dataclass
class Encoded:
    task_id: int
    source: list[int]
    target: list[int]


def encode_tasks(tasks: list[Task], encoder: PromptEncoder, max_source_len: int,
                 max_target_len: int) -> list[list[Encoded]]:
    """Tokenise every example once, by the model's prompt format (`ctr.core.prompt_format`):
    sources keep their end (the question sits there in most T0 prompts); targets keep
    their start and end with EOS."""
    out = []
    for tid, task in enumerate(tasks):
        pairs = encoder.pairs([e.source for e in task.examples], [[e.target] for e in task.examples],
                              max_source_len, max_target_len)
        out.append([Encoded(tid, s, t[0]) for s, t in pairs])
    return out


class MixtureSampler:
    """Which (task, example) pairs make up the global batch of a given step.

    The batch of step s depends on (seed, s) only, so a resumed run sees exactly the
    batches the uninterrupted run would have seen.
    """

    def __init__(self, task_sizes: list[int], mode: str = "proportional", cap: int = 50000,
                 seed: int = 0):
        sizes = np.array([min(n, cap) for n in task_sizes], dtype=np.float64)
        if (sizes <= 0).any():
            raise ValueError("every task needs at least one example")
        self.sizes = sizes.astype(np.int64)
        self.weights = sizes / sizes.sum() if mode == "proportional" else np.full(len(sizes), 1 / len(sizes))
        self.seed = seed

    def batch(self, step: int, batch_size: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, step])
        tasks = rng.choice(len(self.sizes), size=batch_size, p=self.weights)
        return [(int(t), int(rng.integers(self.sizes[t]))) for t in tasks]


def micro_batches(rows: list[Encoded], size: int, adapter: BackboneAdapter, by_length: bool = True,
                  max_tokens: int | None = None, packed: bool = False) -> list[list[Encoded]]:
    """Split one process's share of a global batch into forward passes of at most `size` rows.

    by_length: rows go longest first, so each pass pads its rows to similar lengths (and the
    largest pass runs first: memory fails at step 0, not hours in). The trainer's loss is a
    mean over the global batch's tokens and rows, so how rows are split changes the gradient
    by float rounding only (tests/train/test_micro_batches.py). by_length=False keeps the
    sampled order. max_tokens: a pass also closes before its padded size (the positions
    `adapter.collate` pads it to; `packed`: the tokens of its packed sequence) would exceed
    this budget; a longer row goes alone.
    """
    if size < 1:
        raise ValueError(f"--micro-batch-size must be >= 1, got {size}")
    order = list(rows)
    if by_length:  # stable: equal lengths keep their sampled order
        order.sort(key=lambda r: len(r.source) + len(r.target), reverse=True)
    out: list[list[Encoded]] = []
    cur: list[Encoded] = []
    lengths = lambda rows: [(len(x.source), len(x.target)) for x in rows]
    for r in order:
        if cur and (len(cur) == size or (max_tokens and adapter.padded_tokens(lengths(cur + [r]), packed) > max_tokens)):
            out.append(cur)
            cur = []
        cur.append(r)
    return out + [cur] if cur else out


def split_passes(passes: list[list[Encoded]], n: int) -> list[list[Encoded]]:
    """The same rows in `n` passes: the pass with the most rows is halved until there are n
    (under --micro-batch-tokens processes may plan different counts, but DDP syncs buffers at
    every forward pass, so all of them must run as many)."""
    out = [list(p) for p in passes]
    while len(out) < n:
        i = max(range(len(out)), key=lambda j: len(out[j]))
        if len(out[i]) < 2:
            raise ValueError(f"cannot make {n} forward passes of {sum(map(len, out))} rows")
        half = (len(out[i]) + 1) // 2
        out[i:i + 1] = [out[i][:half], out[i][half:]]
    return out


def collate(rows: list[Encoded], pad_id: int, seq2seq: bool | BackboneAdapter,
            padding_side: str = "right", pack_prompt_len: int | None = None,
            pack_multiple: int = 1) -> dict[str, Any]:
    """Tensors for CTRModel.forward, laid out by the backbone's adapter (`model.adapter`, or
    the older seq2seq flag): decoder-only rows are source + target in one sequence.
    `pack_prompt_len` (the model's soft-prompt length): all rows in one packed sequence,
    padded at its end to a multiple of `pack_multiple` (`ctr.core.packing`)."""
    adapter = adapter_for(seq2seq)
    sources, targets = [r.source for r in rows], [r.target for r in rows]
    if pack_prompt_len is None:
        batch = adapter.collate(sources, targets, pad_id, padding_side)
    else:
        batch = adapter.collate_packed(sources, targets, pack_prompt_len, pack_multiple)
    return {**batch, "task_ids": torch.tensor([r.task_id for r in rows])}
