"""The codes the training tasks start on, for the encoder inits that place every task exactly
on a code (`CTRConfig.encoder_init`), and the encoder that puts them there (`encoder_onto`):

- `spread_codes`: values drawn evenly from the codebook, independent of the tasks. No value
  starts crowded, but two tasks share a value only by chance (no structure to keep).
- `grouped_codes`: at every position the tasks are clustered by a profile of each (the
  trainer gives their description vectors), each cluster takes one value, and each position
  sees the profiles through a random projection of its own, so positions cut the tasks
  differently. Tasks that look alike start sharing values at many positions; a task whose
  whole code repeats another's moves to an unused value at one position, so every task
  starts on a code of its own.

k-means is vector-quantize-pytorch's (`kmeans`); what is written here is the assignment of
clusters to values and the repair of repeated codes, which no library does.
"""
from __future__ import annotations

import torch
from vector_quantize_pytorch.vector_quantize_pytorch import kmeans

# a position's clusters: a sixth of the values (21 of 128), so that each position keeps using
# at least 16 values (`ctr.core.code_health.GOALS`) when k-means leaves a few clusters small
GROUPS_PER_VALUES = 6
PROJECTION_DIM = 32  # each position's view of the profiles
KMEANS_ITERS = 20


def encoder_onto(task_embeddings: torch.Tensor, book: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Encoder [L, E, D] that maps each task embedding e_t [T, E] exactly onto book[c_t,i]
    (least squares, exact when T <= E), for codes [T, L]: z starts on its code, not ~50 units
    from every value."""
    book = book.detach().float()
    pinv = torch.linalg.pinv(task_embeddings.detach().float())  # [E, T]
    return torch.stack([pinv @ book[codes[:, i].to(book.device)] for i in range(codes.shape[1])])


def even_values(count: int, codebook_size: int) -> torch.Tensor:
    """`count` values in random order, each value at most once more than count / K times."""
    return (torch.randperm(codebook_size * (count // codebook_size + 1)) % codebook_size)[:count]


def spread_codes(num_tasks: int, code_length: int, codebook_size: int) -> torch.Tensor:
    """[T, L] codes that use every value about equally often (T * L / K times)."""
    return even_values(num_tasks * code_length, codebook_size).reshape(num_tasks, code_length)


def grouped_codes(profiles: torch.Tensor, code_length: int, codebook_size: int,
                  groups: int | None = None) -> torch.Tensor:
    """[T, L] codes from task profiles [T, P]: tasks with close profiles share values.
    Draws from the global RNG (seed it for a reproducible assignment)."""
    num_tasks = profiles.shape[0]
    groups = min(groups or max(2, codebook_size // GROUPS_PER_VALUES), num_tasks, codebook_size)
    x = profiles.detach().float().cpu()
    x = x - x.mean(0)  # what tells the tasks apart, not what they all share
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    order = even_values(code_length * groups, codebook_size)
    codes = torch.empty(num_tasks, code_length, dtype=torch.long)
    for i in range(code_length):
        view = x @ torch.randn(x.shape[1], PROJECTION_DIM)
        view = view / view.norm(dim=1, keepdim=True).clamp_min(1e-12)
        means, _ = kmeans(view[None], groups, KMEANS_ITERS)
        cluster = torch.cdist(view, means[0]).argmin(1)
        values = order[i * groups:(i + 1) * groups]  # this position's values, one per cluster
        codes[:, i] = values[cluster]
    return _make_distinct(codes, codebook_size)


def _make_distinct(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Each repeat of an earlier task's whole code moves, at the position whose value is
    most used, to a value no task uses there (the least-used one when all are taken)."""
    codes = codes.clone()
    seen: set[tuple[int, ...]] = set()
    for t in range(codes.shape[0]):
        if tuple(codes[t].tolist()) in seen:
            counts = torch.stack([torch.bincount(codes[:, i], minlength=codebook_size)
                                  for i in range(codes.shape[1])])  # [L, K]
            i = int(counts.gather(1, codes[t][:, None]).argmax())
            for v in torch.argsort(counts[i], stable=True).tolist():
                codes[t, i] = v
                if tuple(codes[t].tolist()) not in seen:
                    break
        seen.add(tuple(codes[t].tolist()))
    return codes
