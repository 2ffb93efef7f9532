"""Wrap free per-task prompts (the multi-task prompt-tuning ceiling of issue 12, trained by
`scripts/diagnose_stage1.py --mode free`) as a CTR model folder, so that the ceiling is scored by
the very commands the CTR columns use (`ctr zero-label --checkpoint FOLDER`, Code Ensemble over
the training tasks' prompts) instead of a second implementation of the protocol.

How: one code value per (task, position), so the codebook has T x L rows and row t*L+i is task t's
i-th prompt vector; the decoder is the identity (the soft prompt is the codebook rows) and the
encoder maps each task embedding exactly onto its rows (least squares, exact when T <= the task
embedding width). The folder is checked before it is written: every task's code is its own rows
and its soft prompt equals its free prompt.

Usage: python scripts/free_prompts_to_ctr.py runs/diag/free_lr1e-2/prompts.pt OUT_FOLDER [--model smollm2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ctr.config import CTRConfig
from ctr.core.backbone import load_backbone
from ctr.core.model import CTRModel


def wrap(prompts: torch.Tensor, tasks: list[str], model_name: str) -> CTRModel:
    T, L, H = prompts.shape
    backbone, tok = load_backbone(model_name)
    cfg = CTRConfig(code_length=L, codebook_size=T * L, code_dim=H, task_embed_dim=H,
                    task_names=list(tasks), decoder_init="identity", backbone=model_name)
    model = CTRModel(backbone, cfg, tok)
    codes = torch.arange(T * L).reshape(T, L)
    with torch.no_grad():
        book = prompts.float().reshape(T * L, H)
        model.quantizer.set_codebook(book)
        pinv = torch.linalg.pinv(model.task_embedding.weight.float())  # [E, T]
        model.encoder.copy_(torch.stack([pinv @ book[codes[:, i]] for i in range(L)]))
    got = model.task_codes().cpu()
    if not torch.equal(got, codes):
        raise SystemExit(f"codes of the wrapped prompts are not their own rows: {got.tolist()}")
    ids = torch.arange(T)
    soft = model.soft_prompt(T, ids)[0].detach().float().cpu()
    err = (soft - prompts.float()).abs().max().item()
    if err > 1e-5:
        raise SystemExit(f"wrapped soft prompts differ from the free prompts by {err:.2e}")
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prompts", help="prompts.pt of diagnose_stage1.py --mode free ({'prompts': [T, L, H], 'tasks'})")
    ap.add_argument("out", help="CTR model folder to write")
    ap.add_argument("--model", default="smollm2", help="the backbone the prompts were trained on")
    args = ap.parse_args(argv)
    data = torch.load(args.prompts)
    model = wrap(data["prompts"], data["tasks"], args.model)
    model.save_pretrained(Path(args.out))
    print(f"{args.out}: {len(data['tasks'])} tasks x {data['prompts'].shape[1]} free prompt vectors as codes")


if __name__ == "__main__":
    main()
