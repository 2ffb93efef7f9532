"""Prompt-tuning baseline: a continuous prompt of the code's length, trained on the same shots.

The backbone and the CTR parts stay frozen; only the L x H prompt learns. It starts from
the soft prompt of a given code (the search's start, for a like-for-like comparison) or
from randomly picked vocabulary embeddings.
"""
from __future__ import annotations

import torch

from ctr.train.batching import Encoded, collate
from ctr.adapt.bitwise_search import Shot
from ctr.core.model import CTRModel


def token_embedding_rows(model: CTRModel, n: int, generator: torch.Generator) -> torch.Tensor:
    """n rows [n, H] of the backbone's token embeddings, drawn at random: where a prompt of the
    LM's own input scale starts."""
    emb = model.backbone.get_input_embeddings().weight.detach()
    return emb[torch.randint(emb.shape[0], (n,), generator=generator).to(emb.device)].clone()


def tune_prompt(model: CTRModel, shots: list[Shot], length: int, steps: int = 50, lr: float = 3e-3,
                init_code: list[int] | None = None, seed: int = 0, batch_size: int = 8) -> torch.Tensor:
    if not shots:
        raise ValueError("prompt tuning needs at least one shot")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if init_code is not None and model.config.use_codes:
            init = model.soft_prompt(1, codes=torch.tensor([init_code]))[0][0]
        else:
            init = token_embedding_rows(model, length, g)
    prompt = torch.nn.Parameter(init.detach().clone().float())
    opt = torch.optim.AdamW([prompt], lr=lr, weight_decay=0.0)
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model.eval()
    rows = [Encoded(0, s.input_ids, s.choices[s.label]) for s in shots]
    pad = model.tokenizer.pad_token_id
    try:
        for step in range(steps):
            idx = torch.randperm(len(rows), generator=g)[:batch_size].tolist()
            batch = collate([rows[i] for i in idx], pad, model.adapter)
            batch.pop("task_ids")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(**batch, prompt=prompt.to(model.device))
            out.lm_loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return prompt.detach()
