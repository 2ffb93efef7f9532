"""Training throughput of the real trainer, length-grouped vs sampled-order micro-batches.

    python -m ctr.bench.train --throughput [--model smollm2] [--stage 2] [--batch 64] [--micro 8]

Both variants run `ctr.train.trainer.train` on the T0 training mixture (single-answer tasks
dropped) with the same seed, so step s trains on the same global batch in both; runs go
grouped, sampled, sampled, grouped (no position bias) and the first step of each run is
warm-up. The last line is `tokens_per_s=<grouped> mfu=<grouped> grouped_speedup=<sampled
time / grouped time>`.

tokens_per_s counts real token ids (source + target, no padding, no soft prompt).
mfu = model FLOPs per second / the device's dense bf16 peak, decoder-only backbones only
(na on CPU, for seq2seq backbones and unknown GPUs). Model FLOPs per row of P positions
(source + target + the L soft-prompt positions) with T target tokens, N the backbone's
parameters outside the embedding and LM head, n_layer layers of width d, vocabulary V:
- stage 2 (everything trains): 6·N·P + 12·n_layer·d·P² + 6·d·V·T
  (forward 2, backward 4 per weight and token; attention scores and values as in PaLM's
  appendix B, non-causal count; the LM head runs on target positions only);
- stage 1 (frozen LM): 4·N·P + 8·n_layer·d·P² + 4·d·V·T (the backward needs input
  gradients only: no weight gradients for the frozen backbone);
the CTR module (encoder, quantizer, decoder: under 0.1% of these) is left out. Padding
is not counted as work, so the figure is what a user gets, not what the device does.
`DecoderOnlyAdapter.training_flops` (ctr.core.adapter) computes it; seq2seq backbones
have no formula here (mfu=na).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ctr.config import TrainConfig
from ctr.core.adapter import adapter_for
from ctr.core.backbone import load_backbone
from ctr.bench.report import emit
from ctr.provenance import hardware, provenance
from ctr.train.trainer import train

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def one_run(args, out: Path, grouped: bool) -> tuple[list[dict], list[list[tuple[int, int]]]]:
    """Metrics records of args.steps timed steps (after one warm-up step) and, for each
    forward pass of those steps, its rows' (source, target) lengths."""
    cfg = TrainConfig(output_dir=str(out), model=args.model, stage=args.stage, joint=args.stage == 2,
                      preset="cpu-small", steps=args.steps + 2, batch_size=args.batch,
                      micro_batch_size=args.micro, data_dir=args.data_dir, drop_single_answer=True,
                      max_source_len=args.max_source_len, max_target_len=args.max_target_len,
                      save_every=10 ** 9, group_by_length=grouped, seed=args.seed,
                      limit_examples=args.limit_examples)
    passes: list[list[tuple[int, int]]] = []
    keep = lambda step, rows: step > 0 and passes.append([(len(r.source), len(r.target)) for r in rows])
    train(cfg, stop_after=args.steps + 1, hooks={"micro_batch": keep})  # no final save
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return records[1:], passes


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=2)
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--micro", type=int, default=8, help="micro-batch size")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up)")
    ap.add_argument("--max-source-len", type=int, default=384)
    ap.add_argument("--max-target-len", type=int, default=32)
    ap.add_argument("--data-dir", default=None, help="T0 data folder (default: as ctr train)")
    ap.add_argument("--limit-examples", type=int, default=None, help="per task file (quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    records: dict[bool, list[dict]] = {True: [], False: []}
    passes: dict[bool, list] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, grouped in enumerate([True, False, False, True]):
            rec, p = one_run(args, Path(tmp) / str(i), grouped)
            records[grouped] += rec
            passes[grouped] += p
    secs = {g: sum(r["step_time"] for r in rs) for g, rs in records.items()}
    tokens = sum(r["tokens"] for r in records[True])
    backbone, _ = load_backbone(args.model)
    adapter = adapter_for(backbone)
    padded = {g: sum(adapter.padded_tokens(p) for p in ps) for g, ps in passes.items()}
    L = TrainConfig(output_dir=".", model=args.model).code_length
    flops = adapter.training_flops(backbone, [r for p in passes[True] for r in p], L, args.stage == 1)
    peak = peak_flops()
    mfu = flops / secs[True] / peak if flops and peak else None
    result = {"model": args.model, "stage": args.stage, "batch": args.batch, "micro": args.micro,
              "max_source_len": args.max_source_len, "max_target_len": args.max_target_len,
              "timed_steps_per_variant": len(records[True]),
              "seconds": {"grouped": round(secs[True], 3), "sampled": round(secs[False], 3)},
              "real_tokens": tokens // 2,  # per variant: each ran the same steps twice
              "padded_positions": {"grouped": padded[True] // 2, "sampled": padded[False] // 2},
              "tokens_per_s": round(tokens / secs[True], 1), "mfu": None if mfu is None else round(mfu, 4),
              "grouped_speedup": round(secs[False] / secs[True], 3),
              "hardware": hardware(), "provenance": provenance(argv)}
    emit(result, args.out)
    print(f"tokens_per_s={result['tokens_per_s']} mfu={'na' if mfu is None else f'{mfu:.3f}'} "
          f"grouped_speedup={result['grouped_speedup']}")
    return result
