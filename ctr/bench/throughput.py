"""Training throughput of the real trainer: packed vs padded passes, grouped vs sampled order,
and the trainer's host overhead, measured side by side in one run.

    python -m ctr.bench.train --throughput [--model smollm2] [--stage 2] [--batch 64] [--micro 64]

Every variant runs `ctr.train.trainer.train` on the T0 training mixture (single-answer tasks
dropped) with the same seed, so step s trains on the same global batch in all of them:
- packed: the trainer's default for decoder-only backbones (`--packing`, ctr.core.packing),
  the rows of a pass in one sequence;
- grouped / sampled: padded passes (`--packing no`), rows grouped by length or in sampled order.
Runs go packed, grouped, sampled, sampled, grouped, packed (no position bias); step 0 of each
run is warm-up and steps 1..--steps are timed between two device syncs (the trainer logs no
step in between, as on a long run's unlogged steps).

host_overhead: a tiny Llama (2 layers, width 64, the backbone's tokenizer, so that arithmetic
is small and the host's work shows) trained by `train` (packed passes), over the bare forward + backward + AdamW step of the same model on the same
passes, collated beforehand (`ctr.bench.host_overhead`).

The last line is `tokens_per_s=<packed> mfu=<packed> grouped_speedup=<sampled time / grouped
time> padded_per_token=<packed> host_overhead=<ratio>`.

tokens_per_s counts real token ids (source + target, no padding, no soft prompt).
padded_per_token: the positions the passes were laid out on (padding included, soft prompts
left out) per real token; 1.0 is no padding.
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
import tempfile
from pathlib import Path

import torch

from ctr.bench.host_overhead import host_overhead
from ctr.bench.report import emit
from ctr.bench.train_runs import bench_config, timed_run
from ctr.config import TrainConfig
from ctr.core.adapter import adapter_for
from ctr.core.backbone import load_backbone
from ctr.core.packing import packed_positions, packing_problem
from ctr.provenance import hardware, provenance

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM
LAYOUT = {"packed": dict(packing="yes"), "grouped": dict(packing="no", group_by_length=True),
          "sampled": dict(packing="no", group_by_length=False)}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=2)
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--micro", type=int, default=64, help="micro-batch size (64: one pass per step)")
    ap.add_argument("--padded-micro", type=int, default=None,
                    help="micro-batch size of the padded variants (default --micro; a padded pass "
                         "of 64 long rows may not fit a CPU's memory where the packed one does)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up)")
    ap.add_argument("--tiny-steps", type=int, default=8, help="timed steps of the host-overhead runs")
    ap.add_argument("--pack-multiple", type=int, default=TrainConfig.pack_multiple,
                    help="packed sequences end-padded to a multiple of this (as ctr train's flag)")
    ap.add_argument("--max-source-len", type=int, default=384)
    ap.add_argument("--max-target-len", type=int, default=32)
    ap.add_argument("--data-dir", default=None, help="T0 data folder (default: as ctr train)")
    ap.add_argument("--limit-examples", type=int, default=None, help="per task file (quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    backbone, tok = load_backbone(args.model)
    adapter = adapter_for(backbone)
    variants = ["grouped", "sampled"] if packing_problem(backbone) else ["packed", "grouped", "sampled"]
    pack_multiple = args.pack_multiple
    L = TrainConfig(output_dir=".", model=args.model).module().code_length
    secs = {v: 0.0 for v in variants}
    passes: dict[str, list] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i, v in enumerate(variants + variants[::-1]):
            micro = args.micro if v == "packed" else (args.padded_micro or args.micro)
            s, p = timed_run(bench_config(args, Path(tmp) / str(i), args.model, micro_batch_size=micro,
                                          **LAYOUT[v]), args.steps)
            secs[v] += s
            passes[v] += [rows for _, rows in p]
        overhead = host_overhead(args, tok, Path(tmp) / "tiny")
    lengths = {v: [[(len(r.source), len(r.target)) for r in p] for p in ps] for v, ps in passes.items()}
    real = sum(s + t for p in lengths[variants[0]] for s, t in p)
    padded = {v: sum(adapter.padded_tokens(p) for p in ls) for v, ls in lengths.items()}
    if "packed" in padded:
        padded["packed"] = sum(packed_positions([s + t for s, t in p], L, pack_multiple) for p in lengths["packed"])
    main_v = variants[0]
    flops = adapter.training_flops(backbone, [r for p in lengths[main_v] for r in p], L, args.stage == 1)
    peak = peak_flops()
    mfu = flops / secs[main_v] / peak if flops and peak else None
    result = {"model": args.model, "stage": args.stage, "batch": args.batch, "micro": args.micro,
              "padded_micro": args.padded_micro or args.micro,
              "max_source_len": args.max_source_len, "max_target_len": args.max_target_len,
              "pack_multiple": pack_multiple, "timed_steps_per_variant": 2 * args.steps,
              "seconds": {v: round(s, 3) for v, s in secs.items()},
              "real_tokens": real // 2,  # per variant: each ran the same steps twice
              "padded_positions": {v: n // 2 for v, n in padded.items()},
              "padded_per_token": {v: round(n / real, 4) for v, n in padded.items()},
              "tokens_per_s": round(real / secs[main_v], 1),
              "tokens_per_s_by_variant": {v: round(real / s, 1) for v, s in secs.items()},
              "mfu": None if mfu is None else round(mfu, 4),
              "grouped_speedup": round(secs["sampled"] / secs["grouped"], 3),
              "host_overhead": overhead,
              "hardware": hardware(), "provenance": provenance(argv)}
    emit(result, args.out)
    print(f"tokens_per_s={result['tokens_per_s']} mfu={'na' if mfu is None else f'{mfu:.3f}'} "
          f"grouped_speedup={result['grouped_speedup']} "
          f"padded_per_token={result['padded_per_token'][main_v]} host_overhead={overhead['ratio']}")
    return result
