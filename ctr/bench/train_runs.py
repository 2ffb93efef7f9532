"""Timed runs of the real trainer, shared by the throughput and host-overhead benchmarks."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ctr.config import TrainConfig
from ctr.train.batching import Encoded
from ctr.train.trainer import train


def sync() -> float:
    """The clock after the device has run everything queued."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def bench_config(args, out: Path, model: str, steps: int | None = None, **kw) -> TrainConfig:
    """A benchmark's training run: `steps` (default --steps) timed steps after one warm-up
    step, no checkpoint and no metrics record in between (as on a long run's unlogged steps)."""
    steps = args.steps if steps is None else steps
    return TrainConfig(output_dir=str(out), model=model, stage=args.stage, joint=args.stage == 2,
                       preset="cpu-small", steps=steps + 2, batch_size=args.batch,
                       data_dir=args.data_dir, drop_single_answer=True,
                       max_source_len=args.max_source_len, max_target_len=args.max_target_len,
                       save_every=10 ** 9, log_every=10 ** 9, seed=args.seed,
                       limit_examples=args.limit_examples, pack_multiple=args.pack_multiple,
                       **{"micro_batch_size": args.micro, **kw})


def timed_run(cfg: TrainConfig, timed: int) -> tuple[float, list[tuple[int, list[Encoded]]]]:
    """Seconds of steps 1..timed (between device syncs at the ends of steps 0 and `timed`)
    and the (step, rows) of their forward passes."""
    passes: list[tuple[int, list[Encoded]]] = []
    marks: dict[int, float] = {}
    keep = lambda step, rows: 1 <= step <= timed and passes.append((step, list(rows)))
    mark = lambda step: step in (0, timed) and marks.__setitem__(step, sync())
    train(cfg, stop_after=timed + 1, hooks={"micro_batch": keep, "step_end": mark})  # no final save
    return marks[timed] - marks[0], passes
