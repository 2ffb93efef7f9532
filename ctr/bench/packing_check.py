"""Packed passes against padded ones on this machine's device (what tests/core/test_packing.py
checks on the CPU): a tiny Llama, mixed tasks and lengths in one pass, stage 2.

    python -m ctr.bench.packing_check      (exit 1 when a difference passes its tolerance)

fp32: the per-row attention, loss and gradients to 1e-4. bf16 autocast (on a GPU: PyTorch's
varlen flash attention, where this torch has it): the loss to 2% and the gradients' cosine
similarity >= 0.99 (both layouts round differently in bf16).
"""
from __future__ import annotations

import random
import sys

import torch

from ctr.config import CTRConfig
from ctr.core.model import CTRModel
from ctr.core.packing import attention_kernel
from ctr.core.testing import tiny_backbone
from ctr.train.batching import Encoded, collate


def run(model, batch, device, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(**{k: v.to(device) for k, v in batch.items()})
    out.token_loss_sum.backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return out.token_loss_sum.detach().float(), grads


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    backbone, tok = tiny_backbone("llama", hidden=64)  # head size 16, as flash kernels want
    model = CTRModel(backbone, CTRConfig(task_names=["a", "b", "c"], code_length=3, codebook_size=8),
                     tok).to(device).train()
    rnd = random.Random(0)
    rows = [Encoded(i % 3, [rnd.randint(4, 90) for _ in range(rnd.randint(0, 60))],
                    [rnd.randint(4, 90) for _ in range(rnd.randint(1, 8))]) for i in range(16)]
    padded = collate(rows, 0, model.adapter)
    packed = collate(rows, 0, model.adapter, pack_prompt_len=3, pack_multiple=64)
    ok = True
    half = torch.bfloat16 if device.type == "cuda" else None
    for dtype in [torch.float32] + ([half] if half else []):
        (la, ga), (lb, gb) = run(model, padded, device, dtype), run(model, packed, device, dtype)
        rel = float((la - lb).abs() / la.abs())
        cos = float(torch.nn.functional.cosine_similarity(ga, gb, dim=0))
        gdiff = float((ga - gb).abs().max())
        good = (rel < 1e-4 and gdiff < 1e-4) if dtype == torch.float32 else (rel < 0.02 and cos > 0.99)
        ok &= good
        print(f"[check_packing] {device} {str(dtype)[6:]}: {attention_kernel(device, dtype)}: loss rel diff "
              f"{rel:.2e}, gradient max abs diff {gdiff:.2e}, cosine {cos:.6f}: {'ok' if good else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
