"""The batches of training steps, prepared ahead of the step that trains on them.

The global batch of step s depends on (seed, s) alone (`MixtureSampler`), so a worker
thread samples, splits and collates the forward passes of the next steps while the current
one trains; the loop only copies tensors to the device (from pinned memory on a GPU,
without waiting). Each process plans the passes of every process's shard (every process
knows the global batch), so `--micro-batch-tokens` gives all processes as many passes
without a collective.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ctr.config import TrainConfig
from ctr.core.adapter import BackboneAdapter
from ctr.core.packing import attention_kernel, packing_problem, use_packed_attention
from ctr.train.batching import Encoded, MixtureSampler, collate, micro_batches, split_passes


def resolve_packing(cfg: TrainConfig, model) -> bool:
    """Whether passes are packed (`--packing auto` decides by the backbone); the trainer
    records the answer in resolved_config.json and the checkpoints."""
    if cfg.packing not in ("auto", "yes", "no"):
        raise ValueError(f"--packing must be auto, yes or no, got {cfg.packing!r}")
    problem = packing_problem(model.backbone)
    if cfg.packing == "yes" and problem:
        raise ValueError(f"--packing yes: packed passes would not be exact for this backbone "
                         f"({problem}); use --packing auto or no")
    on = cfg.packing != "no" and problem is None
    if on:
        use_packed_attention(model.backbone)  # before --compile traces the attention
    return on


def packing_summary(model, on: bool, device: torch.device, precision: str) -> str:
    """The line the run prints about its layout."""
    if not on:
        why = packing_problem(model.backbone) or "--packing no"
        return f"packing: off ({why}): padded forward passes"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return (f"packing: on: the rows of each forward pass in one sequence, no padding (attention "
            f"inside each row: {attention_kernel(device, dtype)})")


@dataclass
class Pass:
    """One forward pass: its rows and `CTRModel.forward`'s inputs (on the host)."""

    rows: list[Encoded]
    inputs: dict[str, Any]

    def to(self, device: torch.device) -> dict[str, Any]:
        """The inputs on `device`; from pinned memory the copies do not wait for the GPU."""
        blocking = device.type != "cuda"
        return {k: v.to(device, non_blocking=not blocking) for k, v in self.inputs.items()}


@dataclass
class StepBatch:
    passes: list[Pass]  # this process's share of the global batch
    n_tokens: int  # target tokens of the global batch (the loss is their mean)
    n_inputs: int  # real token ids of the global batch (source + target, no padding)


class StepBatches:
    """`get(step)`: the batch of `step`, prepared `cfg.prefetch` steps ahead by one thread
    (in the calling thread with --prefetch 0). Any step may be asked for: a run that ends
    early (--max-minutes) leaves a few prepared batches unused."""

    def __init__(self, rows, sampler: MixtureSampler, cfg: TrainConfig, adapter: BackboneAdapter,
                 pad_id: int, prompt_len: int | None, rank: int, n_proc: int, pin: bool):
        if cfg.pack_multiple < 1 or cfg.prefetch < 0:
            raise ValueError(f"--pack-multiple must be >= 1 and --prefetch >= 0, got "
                             f"{cfg.pack_multiple} and {cfg.prefetch}")
        self.rows, self.sampler, self.cfg, self.adapter = rows, sampler, cfg, adapter
        self.pad_id, self.prompt_len, self.rank, self.n_proc, self.pin = pad_id, prompt_len, rank, n_proc, pin
        # finished threads exit when the pool is garbage collected: nothing to close
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ctr-batches") if cfg.prefetch else None
        self.pending: dict[int, Future] = {}

    def plan(self, global_rows: list[Encoded]) -> list[list[Encoded]]:
        """This process's forward passes: its contiguous shard, split into passes."""
        cfg, per = self.cfg, len(global_rows) // self.n_proc
        packed = self.prompt_len is not None

        def split(shard):
            return micro_batches(shard, cfg.micro_batch_size, self.adapter, cfg.group_by_length,
                                 cfg.micro_batch_tokens, packed)
        mine = split(global_rows[self.rank * per:(self.rank + 1) * per])
        if self.n_proc > 1 and cfg.micro_batch_tokens:  # DDP syncs at every pass: as many everywhere
            most = max(len(split(global_rows[r * per:(r + 1) * per])) for r in range(self.n_proc))
            mine = split_passes(mine, most)
        return mine

    def make(self, step: int) -> StepBatch:
        global_rows = self.rows.rows(self.sampler.batch(step, self.cfg.batch_size))
        n_tokens = sum(len(r.target) for r in global_rows)
        passes = []
        for chunk in self.plan(global_rows):
            inputs = collate(chunk, self.pad_id, self.adapter, pack_prompt_len=self.prompt_len,
                             pack_multiple=self.cfg.pack_multiple)
            if self.pin:
                inputs = {k: v.pin_memory() for k, v in inputs.items()}
            passes.append(Pass(chunk, inputs))
        return StepBatch(passes, n_tokens, sum(len(r.source) for r in global_rows) + n_tokens)

    def get(self, step: int) -> StepBatch:
        if self.pool is None:
            return self.make(step)
        for s in range(step, step + self.cfg.prefetch + 1):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(self.make, s)
        for s in [s for s in self.pending if s < step]:  # asked out of order: drop the rest
            self.pending.pop(s).cancel()
        return self.pending.pop(step).result()
