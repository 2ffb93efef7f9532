"""Vector quantizer over the L code positions, with one codebook shared by all positions.

Two variants:
- ``plain`` (the paper): a learned codebook; loss ``||sg(z)-q||^2 + beta ||z-sg(q)||^2``.
  Written here because vector-quantize-pytorch's learnable-codebook mode puts one weight
  on a symmetric ``||z-q||^2`` and cannot express the paper's asymmetric loss.
- ``ema``: vector-quantize-pytorch's ``VectorQuantize`` with EMA codebook updates,
  k-means init and dead-code revival (its buffers are updated in place).

Both take encodings ``z`` of shape [batch, L, D] and return the straight-through
quantized vectors, the code indices [batch, L] and the VQ loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import kmeans

from .config import CTRConfig


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, L, D], straight-through: forward = codebook vectors
    codes: torch.Tensor  # [B, L] long
    loss: torch.Tensor  # scalar: codebook + beta * commitment


class CodeQuantizer(nn.Module):
    def __init__(self, config: CTRConfig, dim: int):
        super().__init__()
        self.variant = config.quantizer
        self.codebook_size = config.codebook_size
        self.beta = config.beta
        self.dim = dim
        self.do_kmeans_init = config.kmeans_init
        self.dead_code_threshold = config.dead_code_threshold
        scale = config.codebook_init_scale or 100.0 / config.codebook_size
        if self.variant == "plain":
            self.codebook = nn.Parameter(torch.empty(config.codebook_size, dim).uniform_(-scale, scale))
            # EMA of how often each value is picked: drives dead-code revival and is
            # reported as usage; a buffer so it is saved with the weights.
            self.register_buffer("usage", torch.ones(config.codebook_size))
            self.register_buffer("initted", torch.tensor(not config.kmeans_init))
        else:
            self.vq = VectorQuantize(
                dim=dim, codebook_size=config.codebook_size, decay=config.ema_decay,
                commitment_weight=config.beta, kmeans_init=config.kmeans_init,
                threshold_ema_dead_code=config.dead_code_threshold,
                rotation_trick=False,  # the paper's plain straight-through estimator
                ema_update=True, learnable_codebook=False, sync_codebook=False,
            )
            if not config.kmeans_init:
                with torch.no_grad():
                    self.vq._codebook.embed.uniform_(-scale, scale)
                    self.vq._codebook.embed_avg.copy_(self.vq._codebook.embed)

    @property
    def weight(self) -> torch.Tensor:
        """The codebook [K, D]."""
        return self.codebook if self.variant == "plain" else self.vq._codebook.embed[0]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.weight[codes]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        w = self.weight.detach()
        d = (z.detach().pow(2).sum(-1, keepdim=True) - 2 * z.detach() @ w.t() + w.pow(2).sum(-1))
        return d.argmin(-1)

    @torch.no_grad()
    def init_from_encodings(self, z: torch.Tensor) -> None:
        """k-means init of the codebook from task encodings [N, L, D] (all tasks at once)."""
        flat = z.detach().reshape(-1, self.dim).float()
        if self.variant == "plain":
            means, _ = kmeans(flat[None], self.codebook_size, 10)
            self.codebook.copy_(means[0])
            self.initted.fill_(True)
        else:
            self.vq.train()
            self.vq(flat[None])  # VectorQuantize runs its k-means on the first batch it sees

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.variant == "ema":
            q, codes, loss = self.vq(z)
            return QuantizerOutput(q, codes, loss)
        codes = self.nearest(z)
        q = self.codebook[codes]
        loss = (q - z.detach()).pow(2).mean() + self.beta * (z - q.detach()).pow(2).mean()
        if self.training:
            self._track_usage_and_revive(z, codes)
        return QuantizerOutput(z + (q - z).detach(), codes, loss)

    @torch.no_grad()
    def _track_usage_and_revive(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes.reshape(-1), minlength=self.codebook_size).float()
        self.usage.mul_(0.99).add_(counts, alpha=0.01)
        if self.dead_code_threshold <= 0:
            return
        dead = (self.usage < self.dead_code_threshold).nonzero().flatten()
        if len(dead) == 0:
            return
        flat = z.detach().reshape(-1, self.dim)
        pick = torch.randint(len(flat), (len(dead),), device=flat.device)
        self.codebook.data[dead] = flat[pick]
        self.usage[dead] = 1.0


def code_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, list[float]]:
    """Per-position perplexity and number of distinct values over a set of codes [N, L]."""
    perplexity, in_use = [], []
    for pos in range(codes.shape[1]):
        counts = torch.bincount(codes[:, pos], minlength=codebook_size).float()
        p = counts / counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        perplexity.append(round(float(entropy.exp()), 4))
        in_use.append(int((counts > 0).sum()))
    return {"perplexity": perplexity, "codes_in_use": in_use,
            "distinct_values": int(codes.unique().numel())}
