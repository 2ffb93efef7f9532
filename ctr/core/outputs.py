"""What a CTR forward pass returns (`CTROutput`), built from an adapter's target logits."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ctr.core.adapter import TargetLogits


@dataclass
class CTROutput:
    loss: torch.Tensor  # lm_loss + vq_weight * vq_loss
    lm_loss: torch.Tensor  # mean token cross-entropy of the targets in this batch
    vq_loss: torch.Tensor
    token_loss_sum: torch.Tensor  # summed target-token loss (for exact accumulation)
    example_loss: torch.Tensor  # [B] mean token loss per example
    example_loss_sum: torch.Tensor  # [B] summed token loss per example
    target_tokens: torch.Tensor  # [B] target tokens per example
    codes: torch.Tensor | None  # [B, L]
    logits: torch.Tensor | None = None  # aligned with the caller's tokens (HF convention)


def target_output(out: TargetLogits, vq_loss: torch.Tensor, codes: torch.Tensor | None,
                  vq_weight: float) -> CTROutput:
    """Token and row losses from an adapter's target logits, without reading anything back
    on the host (rows are summed by index, not selected by a mask)."""
    vq_loss = vq_loss.float()
    zero_rows, z = vq_loss.new_zeros(out.batch_size), vq_loss.new_zeros(())
    if out.logits is None:  # no labels: the logits alone
        return CTROutput(z, z, vq_loss, z, zero_rows, zero_rows, zero_rows.long(), codes, out.caller_logits)
    token_loss = F.cross_entropy(out.logits.float(), out.targets, reduction="none")
    per_ex, total = zero_rows.index_add(0, out.rows, token_loss), token_loss.sum()
    counts = zero_rows.long().index_add(0, out.rows, torch.ones_like(out.rows))
    lm_loss = total / counts.sum().clamp(min=1)
    return CTROutput(
        loss=lm_loss + vq_weight * vq_loss, lm_loss=lm_loss, vq_loss=vq_loss, token_loss_sum=total,
        example_loss=per_ex / counts.clamp(min=1), example_loss_sum=per_ex, target_tokens=counts,
        codes=codes, logits=out.caller_logits)
