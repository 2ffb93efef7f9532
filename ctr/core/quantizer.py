"""Vector quantizer over the L code positions, with one codebook shared by all positions.

Two variants:
- ``plain`` (the paper): a learned codebook; loss ``||sg(z)-q||^2 + beta ||z-sg(q)||^2``.
  Written here because vector-quantize-pytorch's learnable-codebook mode puts one weight
  on a symmetric ``||z-q||^2`` and cannot express the paper's asymmetric loss.
- ``ema``: vector-quantize-pytorch's ``VectorQuantize`` with EMA codebook updates and
  k-means init (its buffers are updated in place).

Dead-code revival puts a value that no encoding picks (and whose usage is under the
threshold) on an encoding drawn by k-means++ seeding (`revival_picks`), never on one that
already sits on a value: the plain variant, and the ema variant with every task quantised.
The ema variant in batch mode keeps vector-quantize-pytorch's revival inside its forward
(a uniform draw from the batch, synced over the processes).

Both take encodings ``z`` of shape [batch, L, D] and return the quantized vectors (forward:
the codebook vectors; gradient to ``z`` straight through, or by the rotation trick), the
code indices [batch, L] and the VQ loss. Codes are always picked in fp32 with autocast off,
so bf16 training assigns the codes the saved code table shows.

Every task at once (``complete=True``, `CTRConfig.quantize_all_tasks`): the codes depend on
the task only, so the model can quantise the encodings of all T training tasks at every
step ([T, L, D], a few thousand vectors) instead of the batch's. The VQ loss, the
codebook's update (the plain variant's codebook loss, the ema variant's EMA k-means step)
and dead-code revival then see every task, and a value that no task of this batch uses
still follows the tasks it serves. The statistics are taken once per optimizer step
(`end_step`), identically on every process (each holds all tasks), so any micro-batching
and process count make the same update.

Several processes, batch mode: the plain variant sums its usage counts over the processes
and draws revival vectors from the encodings of all of them, identically on every
process; the ema variant syncs its EMA statistics (vector-quantize-pytorch's
``sync_codebook``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import batched_sample_vectors, kmeans, noop, rotate_to

from ctr.config import CTRConfig


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, L, D]: forward = codebook vectors, gradient to z
    codes: torch.Tensor  # [B, L] long
    loss: torch.Tensor  # scalar: codebook + beta * commitment (+ usage entropy term)


def world_size() -> int:
    """Processes in the torch.distributed group (1 when it is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def no_autocast(device: torch.device):
    """A context with autocast off on `device` (codes are picked in fp32)."""
    return torch.autocast(device_type=device.type, enabled=False)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device):
    """The global RNG (CPU and `device`) seeded with `seed` inside, restored after: random
    draws made here are alike on every process. No-op for `seed=None`."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def usage_entropy_loss(z: torch.Tensor, book: torch.Tensor, temperature: float) -> torch.Tensor:
    """Minus the entropy of the mean soft assignment of the encodings z [N, L, D] to the
    codebook [K, D], per position, averaged over positions: lowest when every value serves
    an equal share of the tasks. The assignment is softmax(-distance / temperature) (as
    vector-quantize-pytorch's codebook diversity loss, whose forward we do not run: it
    would take the batch, not every task, and position-blind)."""
    with no_autocast(z.device):
        d = torch.cdist(z.float(), book.float()[None].expand(z.shape[0], -1, -1))  # [N, L, K]
        mean = (-d / temperature).softmax(-1).mean(0)  # [L, K]
        return (mean * mean.clamp(min=1e-12).log()).sum(-1).mean()


class CodeQuantizer(nn.Module):
    def __init__(self, config: CTRConfig, dim: int):
        super().__init__()
        # When True (the trainer sets it), the statistics of the forward passes (plain: usage
        # and revival; complete mode: also the ema variant's EMA step) are kept until
        # `end_step()`, which applies them once per optimizer step: the same result for any
        # micro-batching or process count.
        self.defer_usage = False
        self.revived = 0  # codes revived by the last usage update
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._complete = False  # the pending encodings are every task's (complete mode)
        self.variant = config.quantizer
        self.codebook_size = config.codebook_size
        self.beta = config.beta
        self.dim = dim
        self.do_kmeans_init = config.kmeans_init
        self.dead_code_threshold = config.dead_code_threshold
        self.rotation_trick = config.rotation_trick
        self.entropy_weight = config.code_entropy_weight
        self.entropy_temperature = config.code_entropy_temperature
        # False while the codebook warms up (the trainer sets it from the step, so a resumed
        # run knows; `CTRModel` then decodes the encodings themselves)
        self.quantizing = True
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
                rotation_trick=config.rotation_trick,  # default: the paper's straight-through
                ema_update=True, learnable_codebook=False,
                # batch mode: EMA statistics (and dead-code samples) summed over the processes
                # when the model is built inside a distributed run (the trainer builds it after
                # the process group is up); complete mode: every process holds every task
                sync_codebook=world_size() > 1 and not config.quantize_all_tasks,
            )
            if not config.kmeans_init:
                with torch.no_grad():
                    self.vq._codebook.embed.uniform_(-scale, scale)
                    self.vq._codebook.embed_avg.copy_(self.vq._codebook.embed)
            # value offsets: what the LM loss learns for each value, added to its centroid
            # in the prompt; the centroids alone (an EMA k-means of the tasks) decide codes
            self.offsets = nn.Parameter(torch.zeros(config.codebook_size, dim)) if config.value_offsets else None

    @property
    def centers(self) -> torch.Tensor:
        """The vectors codes are assigned by [K, D] (plain: the codebook; ema: the centroids)."""
        return self.codebook if self.variant == "plain" else self.vq._codebook.embed[0]

    @property
    def weight(self) -> torch.Tensor:
        """The codebook [K, D] as the prompt sees it: the centers, plus the value offsets."""
        offsets = getattr(self, "offsets", None)
        return self.centers if offsets is None else self.centers + offsets

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.weight[codes]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest center, computed in fp32 whatever the autocast."""
        with no_autocast(z.device):
            w, z = self.centers.detach().float(), z.detach().float()
            d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ w.t() + w.pow(2).sum(-1))
        return d.argmin(-1)

    def through(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Forward: q (the codebook vectors, no gradient to them from here); backward: the
        gradient reaches z straight through, or rotated and scaled by the rotation trick
        (vector-quantize-pytorch's `rotate_to`)."""
        q = q.detach()
        return rotate_to(z, q) if self.rotation_trick else z + (q - z).detach()

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
        """Replace the codebook's centers [K, D] (both variants; the EMA average follows)."""
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
            cb = self.vq._codebook
            cb.initted.fill_(False)
            self.vq.train()
            with self._local_codebook(), no_autocast(flat.device):
                cb.init_embed_(flat[None])  # vector-quantize-pytorch's k-means init

    def forward(self, z: torch.Tensor, complete: bool = False) -> QuantizerOutput:
        """Quantise encodings z [B, L, D]; `complete`: z holds every training task (its
        statistics replace, rather than add to, those of earlier passes of the step)."""
        if self.variant == "ema" and not complete:
            # vector-quantize-pytorch turns autocast off for CUDA only: distances in fp32 here
            with no_autocast(z.device):
                q, codes, loss = self.vq(z.float())
            return QuantizerOutput(self._offset(q, codes), codes, loss)
        codes = self.nearest(z)
        q = self.centers[codes]
        commitment = (z - q.detach()).pow(2).mean()
        # plain: the codebook moves towards its encodings by gradient; ema: by the EMA step
        loss = self.beta * commitment + ((q - z.detach()).pow(2).mean() if self.variant == "plain" else 0)
        if self.entropy_weight:
            loss = loss + self.entropy_weight * usage_entropy_loss(z, self.centers, self.entropy_temperature)
        if self.training:
            self._note(z.detach().float().reshape(-1, self.dim), codes.reshape(-1), complete)
        return QuantizerOutput(self._offset(self.through(z, q), codes), codes, loss)

    def _offset(self, q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """q plus the offsets of its values (the LM gradient reaches them), if there are any."""
        offsets = getattr(self, "offsets", None)
        return q if offsets is None else q + offsets[codes]

    def _note(self, flat: torch.Tensor, codes: torch.Tensor, complete: bool) -> None:
        if complete:  # every pass of a step sees the same encodings: keep one copy
            self._pending, self._complete = [(flat, codes)], True
        elif self.defer_usage:
            self._pending.append((flat, codes))
        elif self.variant == "plain":
            self._track_usage_and_revive(flat, codes, 1)
        else:
            raise RuntimeError("the ema quantizer takes batch encodings through vector-quantize-pytorch")

    @torch.no_grad()
    def end_step(self, seed: int | None = None) -> None:
        """With `defer_usage`: one usage update (and dead-code revival) for all the forward
        passes since the last call, alike on every process (`seed` draws the revival
        vectors; default: the global RNG). Complete mode: one update from every task's
        encodings (ema: the EMA k-means step of vector-quantize-pytorch)."""
        self.revived = 0
        if not self._pending:
            return
        z = torch.cat([p[0] for p in self._pending])
        codes = torch.cat([p[1] for p in self._pending])
        n_forwards, complete = len(self._pending), self._complete
        self._pending, self._complete = [], False
        if self.variant == "plain":
            self._track_usage_and_revive(z, codes, n_forwards, seed, complete)
            return
        cb = self.vq._codebook
        with seeded(seed, z.device), self._local_codebook():
            # the steps of vector-quantize-pytorch's `update_codebook`, taken one by one to
            # count the dead codes the last one replaces
            onehot = torch.nn.functional.one_hot(codes, self.codebook_size).float()
            cb.track_cluster_size_and_embed_avg(z[None], onehot[None])
            cb.update_ema()
            if self.dead_code_threshold > 0:
                # vector-quantize-pytorch's `expire_codes_` draws the new vectors uniformly, and
                # would put a value on an encoding that already sits on one (see `revival_picks`).
                # Dead: under the threshold and picked by no encoding of this step (the EMA
                # count of a value that serves one task can stay just under 1)
                dead = ((cb.cluster_size[0] < self.dead_code_threshold) & (onehot.sum(0) == 0)).nonzero().flatten()
                # every process holds every task's encodings, bit for bit: the same picks
                pick = revival_picks(z, cb.embed[0], dead)
                dead = dead[:len(pick)]
                self.revived = len(dead)
                cb.embed.data[0, dead] = z[pick]
                cb.embed_avg.data[0, dead] = z[pick] * cb.reset_cluster_size
                cb.cluster_size.data[0, dead] = cb.reset_cluster_size
                if self.offsets is not None:  # a revived value starts its offset anew
                    self.offsets.data[dead] = 0.0

    @torch.no_grad()
    def _track_usage_and_revive(self, flat: torch.Tensor, codes: torch.Tensor, n_forwards: int,
                                seed: int | None = None, complete: bool = False) -> None:
        """usage <- EMA (0.99 per forward pass) of the codes picked per forward pass;
        codes under the threshold that no encoding picked take encodings of the batch
        (complete mode: of every task) drawn by `revival_picks`. With several processes in
        batch mode the counts are summed over all of them and the encodings gathered, so
        every process makes the same update as one process would on the whole global batch
        (the encodings are ordered by content before the draw: row order does not matter)."""
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        counts = torch.cat([counts, counts.new_tensor([float(n_forwards)])])
        world = 1 if complete else world_size()  # complete: every process holds every task
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
        # dead: under the threshold and picked by no encoding of this step (counts summed
        # over the processes: alike on every one)
        dead = ((self.usage < self.dead_code_threshold) & (counts == 0)).nonzero().flatten()
        if len(dead) == 0:
            return
        if world > 1:
            flat = _all_gather_rows(flat)
        # a canonical order, whatever the split of the rows over passes and processes (the
        # trainer groups rows by length): by content, so a pick names the same encoding
        key = flat.double() @ torch.linspace(1, 2, flat.shape[1], dtype=torch.float64, device=flat.device)
        flat = flat[torch.argsort(key, stable=True)]
        with seeded(seed, flat.device):
            pick = revival_picks(flat, self.codebook, dead)
        if world > 1:  # rank 0's picks (the distances may differ in the last bit)
            pick = _broadcast_rows(pick)
        dead = dead[:len(pick)]
        self.codebook.data[dead] = flat[pick].to(self.codebook.dtype)
        self.usage[dead] = 1.0
        self.revived = len(dead)


# An encoding nearer than this to a value in use (relative to the encodings' RMS norm) is
# served by it: reviving a value on it would make a second copy of that value
SERVED_DISTANCE = 1e-3


@torch.no_grad()
def revival_picks(flat: torch.Tensor, centers: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Rows of the encodings `flat` [N, D] for the first of the `dead` values (indices into
    `centers` [K, D]), by k-means++ seeding given the values in use (the others): each pick
    is drawn (global RNG) with probability proportional to its squared distance from the
    nearest value in use or picked before it.

    Hand-written because vector-quantize-pytorch's revival draws uniformly: a value revived
    on an encoding that already sits on a value (every task of a grouped or spread start, a
    task alone on its value) is a second copy of it, and which copy the task then picks is
    decided by float rounding, differently in one process and in several. The callers
    count a value as dead only if no encoding of the step picked it, so every encoding's
    own value is among those in use. Encodings
    within `SERVED_DISTANCE` of a value are never drawn; when fewer are left than values
    dead, fewer values are revived (the others stay dead until an encoding leaves its value)."""
    picks: list[int] = []
    if len(dead) == 0:
        return torch.tensor(picks, dtype=torch.long, device=flat.device)
    live = torch.ones(len(centers), dtype=torch.bool, device=centers.device)
    live[dead] = False
    with no_autocast(flat.device):
        x = flat.detach().double()
        d2 = torch.cdist(x, centers.detach()[live].double()).pow(2).min(1).values if live.any() \
            else x.pow(2).sum(1)
        floor = SERVED_DISTANCE ** 2 * x.pow(2).sum(1).mean()
        for _ in range(len(dead)):
            w = torch.where(d2 > floor, d2, torch.zeros_like(d2))
            if not bool(w.any()):
                break
            i = int(torch.multinomial(w, 1))
            picks.append(i)
            d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
        return torch.tensor(picks, dtype=torch.long, device=flat.device)


def _broadcast_rows(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's `x` [n, ...] on every process (n may differ between processes)."""
    n = torch.tensor([x.shape[0]], device=x.device)
    dist.broadcast(n, src=0)
    k = int(n)
    out = (x[:k] if x.shape[0] >= k else torch.cat([x, x.new_zeros(k - x.shape[0], *x.shape[1:])])).contiguous()
    if k:  # every process knows k: all skip together
        dist.broadcast(out, src=0)
    return out


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
