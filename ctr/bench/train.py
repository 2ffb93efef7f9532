"""Training-step cost of CTR, measured side by side in one run.

    python -m ctr.bench.train [--model smollm2] [--batch 8] [--source-len 256] [--reps 3]
    python -m ctr.bench.train --throughput ...   (ctr.bench.throughput: tokens/s, MFU and
                                                 the length-grouping speed-up of the trainer)

- ctr_step_ratio: a full CTR training step (stage 2: soft prompt + backbone trained)
  over the same step of the bare backbone (no codes, same batch, same optimizer).
  The L extra prompt positions are the only inherent cost.
- target_only_ratio: a stage-1 CTR step whose LM head runs on target positions only,
  over the same step computing full-vocabulary logits for every position.
Timings interleave the variants (A B, B A, ...) and report medians.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from ctr.core.adapter import adapter_for
from ctr.core.backbone import load_backbone
from ctr.train.batching import Encoded, collate
from ctr.config import CTRConfig
from ctr.tasks.mixture import load_t0_tasks
from ctr.core.model import CTRModel
from ctr.bench.report import emit
from ctr.provenance import provenance


def make_rows(tok, batch: int, source_len: int) -> list[Encoded]:
    """Real T0 examples when the data is there, else repeated text; sources cut to source_len."""
    try:
        tasks, _ = load_t0_tasks(max_tasks=40, limit_examples=4)
        pairs = [(e.source, e.target) for t in tasks for e in t.examples if len(e.source) > 4 * source_len]
    except FileNotFoundError:
        pairs = []
    if len(pairs) < batch:
        pairs += [("The quick brown fox jumps over the lazy dog. " * 80, "A fox.")] * batch
    rows = []
    for i, (s, t) in enumerate(pairs[:batch]):
        src = tok(s, add_special_tokens=False).input_ids[:source_len]
        tgt = tok(t, add_special_tokens=False).input_ids[:31] + [tok.eos_token_id]
        rows.append(Encoded(i % 4, src, tgt))
    return rows


def step_fn(model: CTRModel, batch: dict, target_only: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    if not model.config.use_codes:
        batch = {k: v for k, v in batch.items() if k != "task_ids"}

    def run() -> float:
        t0 = time.perf_counter()
        out = model(**batch, target_only=target_only)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0
    return run


def timed(fns: dict, reps: int) -> dict[str, float]:
    for f in fns.values():  # warm-up
        f()
    times = {k: [] for k in fns}
    order = list(fns)
    for r in range(reps):
        for k in order if r % 2 == 0 else order[::-1]:  # A B, B A, ...: no position bias
            times[k].append(fns[k]())
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    if "--throughput" in (sys.argv[1:] if argv is None else argv):
        from ctr.bench import throughput
        throughput.main(argv)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--source-len", type=int, default=256)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone, tok = load_backbone(args.model)
    batch = collate(make_rows(tok, args.batch, args.source_len), tok.pad_token_id, adapter_for(backbone))
    names = ["t0", "t1", "t2", "t3"]
    ctr = CTRModel(backbone, CTRConfig(task_names=names), tok).train()
    bare = CTRModel(backbone, CTRConfig(use_codes=False), tok).train()
    # Stage 2 (everything trainable): CTR vs the bare backbone.
    full = timed({"ctr": step_fn(ctr, batch, True), "bare": step_fn(bare, batch, True)}, args.reps)
    # Stage 1 (backbone frozen): target-only LM head vs full logits.
    ctr.freeze_backbone()
    head = timed({"target_only": step_fn(ctr, batch, True), "full_logits": step_fn(ctr, batch, False)},
                 args.reps)
    result = {
        "model": args.model, "batch": args.batch, "source_len": args.source_len,
        "tokens_per_row": int(batch["attention_mask"].sum(1).float().mean()),
        "reps": args.reps, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "seconds": {**{f"stage2_{k}": round(v, 3) for k, v in full.items()},
                    **{f"stage1_{k}": round(v, 3) for k, v in head.items()}},
        "ctr_step_ratio": round(full["ctr"] / full["bare"], 3),
        "target_only_ratio": round(head["target_only"] / head["full_logits"], 3),
        "provenance": provenance(),
    }
    emit(result, args.out)
    print(f"ctr_step_ratio={result['ctr_step_ratio']} target_only_ratio={result['target_only_ratio']}")


if __name__ == "__main__":
    main()
