"""The trainer's host overhead: its step time over the bare step of the same model on the
same batches, on a tiny Llama (2 layers, width 64, the backbone's tokenizer) where arithmetic
is small and the host's work (sampling, collating, moving, accumulating, clipping,
scheduling, logging) shows.

bare: the model `ctr train` builds, `model(**inputs)`, the backward of the trainer's loss
and AdamW as the trainer makes it, on the trainer's passes collated beforehand and already
on the device. Runs go trainer, bare, bare, trainer; each times its steps 1..k after one
warm-up step, between device syncs.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from ctr.bench.train_runs import bench_config, sync, timed_run
from ctr.core.testing import tiny_backbone
from ctr.train.batching import collate
from ctr.train.dataset_cache import open_training_data
from ctr.train.step_batches import resolve_packing
from ctr.train.trainer import build_model, make_optimizer, plan_run, set_trainable


def save_tiny_llama(tok, path: Path) -> Path:
    """A tiny random Llama with the backbone's tokenizer."""
    model, _ = tiny_backbone("llama", hidden=64, layers=2, vocab_size=len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def bare_steps(cfg, passes, device: torch.device):
    """A function running the bare steps of `passes` [(step, rows)]; returns seconds."""
    cfg = plan_run(cfg)  # the values the trainer's run of `cfg` uses
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, open_training_data(cfg, verbose=False).tasks)
    set_trainable(model, cfg)
    packed = resolve_packing(cfg, model)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    prompt = model.config.code_length if model.config.use_codes else 0
    pad = model.tokenizer.pad_token_id
    steps: dict[int, list] = {}
    for step, rows in passes:
        inputs = collate(rows, pad, model.adapter, pack_prompt_len=prompt if packed else None,
                         pack_multiple=cfg.pack_multiple)
        if not cfg.mode.uses_codes:
            inputs.pop("task_ids")
        steps.setdefault(step, []).append((rows, {k: v.to(device) for k, v in inputs.items()}))
    n_tokens = {s: sum(len(r.target) for rows, _ in ps for r in rows) for s, ps in steps.items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def one(step):
        for rows, inputs in steps[step]:
            with autocast:
                o = model(**inputs)
                loss = o.token_loss_sum / n_tokens[step] + model.config.vq_weight * o.vq_loss * (
                    len(rows) / cfg.batch_size)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def run() -> float:
        one(min(steps))  # warm-up
        t0 = sync()
        for step in sorted(steps):
            one(step)
        return sync() - t0
    return run


def host_overhead(args: argparse.Namespace, tok, folder: Path) -> dict:
    """{"trainer_s", "bare_s", "ratio", ...} of the tiny model (see the module's doc)."""
    path = save_tiny_llama(tok, folder / "model")
    cfg = lambda i: bench_config(args, folder / f"run{i}", str(path), steps=args.tiny_steps)
    trainer_s, passes = timed_run(cfg(0), args.tiny_steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bare = bare_steps(cfg(1), passes, device)
    bare_s = bare() + bare()
    trainer_s += timed_run(cfg(2), args.tiny_steps)[0]
    return {"model": "tiny Llama (2 layers, width 64, the backbone's tokenizer)", "timed_steps": 2 * args.tiny_steps,
            "trainer_s": round(trainer_s, 4), "bare_s": round(bare_s, 4),
            "ratio": round(trainer_s / bare_s, 3)}
