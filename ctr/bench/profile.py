"""Where the trainer's steps spend their time: a torch.profiler trace of a few steps of
`ctr train` (stage 2 with fresh codes, then stage 1), summarised into one small text file.

    python -m ctr.bench.profile [--model smollm2] [--batch 64] [--steps 3] [--out FILE]

Each stage trains on the T0 mixture (single-answer tasks dropped, as ctr.bench.train
--throughput does) with its default layout (packed passes where the backbone packs); step 0
is warm-up, the next --steps are profiled between device syncs. Per stage the file gives the
wall time per step, the host's busy time (self CPU time of all operators, profiler overhead
included) and the device's (self time of its kernels) as shares of that wall time, and the
operators that take the most device time and the most host time.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ctr.bench.train_runs import bench_config, sync
from ctr.train.trainer import train


def device_time(e) -> float:
    """Self time on the device of one operator row (the name changed across torch versions)."""
    return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) or 0.0)


def profile_stage(args, stage: int, out: Path) -> list[str]:
    args.stage = stage
    cfg = bench_config(args, out, args.model, steps=args.steps)
    cuda = torch.cuda.is_available()
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
    marks = {}

    def step_end(step):
        if step == 0:
            marks[0] = sync()
            prof.start()
        elif step == args.steps:
            marks[1] = sync()
            prof.stop()
    train(cfg, stop_after=args.steps + 1, hooks={"step_end": step_end})
    wall_us = (marks[1] - marks[0]) * 1e6
    events = prof.key_averages()
    host = sum(e.self_cpu_time_total for e in events)
    dev = sum(device_time(e) for e in events)
    lines = [f"## stage {stage}: {args.steps} steps x {args.batch} rows (micro {args.micro}), "
             f"{wall_us / args.steps / 1e3:.1f} ms a step",
             f"host busy {host / wall_us:.1%} of the wall time, device busy "
             f"{dev / wall_us:.1%}" + ("" if cuda else " (no device: CPU only)"), ""]
    cols = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    if cuda:
        lines += ["### by device time", events.table(sort_by=cols, row_limit=args.rows), ""]
    lines += ["### by host time", events.table(sort_by="self_cpu_time_total", row_limit=args.rows), ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--micro", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per stage (after one warm-up)")
    ap.add_argument("--rows", type=int, default=15, help="operator rows per table")
    ap.add_argument("--max-source-len", type=int, default=384)
    ap.add_argument("--max-target-len", type=int, default=32)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit-examples", type=int, default=None)
    ap.add_argument("--pack-multiple", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="profile_train.txt")
    args = ap.parse_args(argv)
    lines = [f"# Trainer profile: {args.model}, "
             f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, torch {torch.__version__}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (2, 1):
            lines += profile_stage(args, stage, Path(tmp) / f"s{stage}")
            Path(args.out).write_text("\n".join(lines) + "\n")  # a cut run keeps the first stage
    print("\n".join(lines))


if __name__ == "__main__":
    main()
