"""Vector quantizer over the L code positions, with one codebook shared by all positions.

Two variants:
- ``plain`` (the paper): a learned codebook; loss ``||sg(z)-q||^2 + beta ||z-sg(q)||^2``.
  Written here because vector-quantize-pytorch's learnable-codebook mode puts one weight
  on a symmetric ``||z-q||^2`` and cannot express the paper's asymmetric loss.
- ``ema``: vector-quantize-pytorch's ``VectorQuantize`` with EMA codebook updates,
  k-means init and dead-code revival (its buffers are updated in place).

Both take encodings ``z`` of shape [batch, L, D] and return the straight-through
quantized vectors, the code indices [batch, L] and the VQ loss. Codes are always picked
in fp32 with autocast off, so bf16 training assigns the codes the saved code table shows.

Several processes (torch.distributed initialised): the plain variant sums its usage
counts over the processes and draws revival vectors from the encodings of all of them,
identically on every process; the ema variant syncs its EMA statistics
(vector-quantize-pytorch's ``sync_codebook``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import batched_sample_vectors, kmeans, noop

from ctr.config import CTRConfig


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, L, D], straight-through: forward = codebook vectors
    codes: torch.Tensor  # [B, L] long
    loss: torch.Tensor  # scalar: codebook + beta * commitment


def world_size() -> int:
    """Processes in the torch.distributed group (1 when it is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def no_autocast(device: torch.device):
    """A context with autocast off on `device` (codes are picked in fp32)."""
    return torch.autocast(device_type=device.type, enabled=False)


class CodeQuantizer(nn.Module):
    def __init__(self, config: CTRConfig, dim: int):
        super().__init__()
        # plain: when True (the trainer sets it), usage counts and encodings of the forward
        # passes are kept until `end_step()`, which updates usage and revives dead codes
        # once per optimizer step: the same result for any micro-batching or process count.
        self.defer_usage = False
        self.revived = 0  # codes revived by the last usage update (plain)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
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
                ema_update=True, learnable_codebook=False,
                # EMA statistics (and dead-code samples) summed over the processes when the
                # model is built inside a distributed run (the trainer builds it after the
                # process group is up)
                sync_codebook=world_size() > 1,
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
        """Index of the nearest codebook vector, computed in fp32 whatever the autocast."""
        with no_autocast(z.device):
            w, z = self.weight.detach().float(), z.detach().float()
            d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ w.t() + w.pow(2).sum(-1))
        return d.argmin(-1)

    @contextlib.contextmanager
    def _local_codebook(self):
        """ema: no cross-process sync inside (k-means init on data every process holds)."""
        cb = self.vq._codebook
        names = ("sample_fn", "replace_sample_fn", "kmeans_all_reduce_fn", "all_reduce_fn")
        saved = {n: getattr(cb, n) for n in names}
        cb.sample_fn = cb.replace_sample_fn = batched_sample_vectors
        cb.kmeans_all_reduce_fn = cb.all_reduce_fn = noop
        try:
            yield
        finally:
            for n, v in saved.items():
                setattr(cb, n, v)

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        """Replace the codebook [K, D] (both variants; the EMA average follows)."""
        if self.variant == "plain":
            self.codebook.copy_(vectors)
        else:
            self.vq._codebook.embed[0].copy_(vectors)
            self.vq._codebook.embed_avg[0].copy_(vectors)

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
            with self._local_codebook(), no_autocast(flat.device):
                self.vq(flat[None])  # VectorQuantize runs its k-means on the first batch it sees

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.variant == "ema":
            # vector-quantize-pytorch turns autocast off for CUDA only: distances in fp32 here
            with no_autocast(z.device):
                q, codes, loss = self.vq(z.float())
            return QuantizerOutput(q, codes, loss)
        codes = self.nearest(z)
        q = self.codebook[codes]
        loss = (q - z.detach()).pow(2).mean() + self.beta * (z - q.detach()).pow(2).mean()
        if self.training:
            if self.defer_usage:
                self._pending.append((z.detach().float().reshape(-1, self.dim), codes.reshape(-1)))
            else:
                self._track_usage_and_revive(z.detach().float().reshape(-1, self.dim),
                                             codes.reshape(-1), 1)
        return QuantizerOutput(z + (q - z).detach(), codes, loss)

    @torch.no_grad()
    def end_step(self, generator: torch.Generator | None = None) -> None:
        """plain with `defer_usage`: one usage update (and dead-code revival) for all the
        forward passes since the last call, on every process together. `generator` draws
        the revival vectors (default: the global RNG)."""
        if self.variant != "plain" or not self._pending:
            self.revived = 0
            return
        z = torch.cat([p[0] for p in self._pending])
        codes = torch.cat([p[1] for p in self._pending])
        n_forwards = len(self._pending)
        self._pending = []
        self._track_usage_and_revive(z, codes, n_forwards, generator)

    @torch.no_grad()
    def _track_usage_and_revive(self, flat: torch.Tensor, codes: torch.Tensor, n_forwards: int,
                                generator: torch.Generator | None = None) -> None:
        """usage <- EMA (0.99 per forward pass) of the codes picked per forward pass;
        codes under the threshold take random encodings of the batch. With several
        processes the counts are summed over all of them and the encodings gathered, so
        every process makes the same update as one process would on the whole global batch
        (the encodings are ordered by content before the draw: row order does not matter)."""
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        counts = torch.cat([counts, counts.new_tensor([float(n_forwards)])])
        world = world_size()
        if world > 1:
            dist.all_reduce(counts)
        counts, n_forwards = counts[:-1], float(counts[-1])
        # n_forwards updates of 0.99 each, with the mean count of a forward pass
        decay = 0.99 ** n_forwards
        self.usage.mul_(decay).add_(counts / n_forwards, alpha=1 - decay)
        self.revived = 0
        if self.dead_code_threshold <= 0:
            return
        if world > 1:  # one authoritative copy (all-reduce results may differ in the last bit)
            dist.broadcast(self.usage, src=0)
        dead = (self.usage < self.dead_code_threshold).nonzero().flatten()
        if len(dead) == 0:
            return
        if world > 1:
            flat = _all_gather_rows(flat)
        # a canonical order, whatever the split of the rows over passes and processes (the
        # trainer groups rows by length): by content, so a pick names the same encoding
        key = flat.double() @ torch.linspace(1, 2, flat.shape[1], dtype=torch.float64, device=flat.device)
        flat = flat[torch.argsort(key, stable=True)]
        device = generator.device if generator is not None else flat.device
        pick = torch.randint(len(flat), (len(dead),), device=device, generator=generator)
        pick = pick.to(flat.device)
        if world > 1:
            dist.broadcast(pick, src=0)
        self.codebook.data[dead] = flat[pick].to(self.codebook.dtype)
        self.usage[dead] = 1.0
        self.revived = len(dead)


def _all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of `x` [n, D] of every process, concatenated in rank order (n may differ)."""
    world = world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    width = int(max(s.item() for s in sizes))
    padded = torch.cat([x, x.new_zeros(width - x.shape[0], *x.shape[1:])]) if width > x.shape[0] else x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])
