"""Gradient-guided Bitwise Search: exact scores for the few values a gradient ranks first.

A code is a prefix, so codes x shots share no computation: the lever is to score fewer
candidates. One forward and backward pass over the search shots (the summed target loss,
through `CTRModel.forward` with the code's soft prompt as a continuous `prompt=`, so the
backbone adapter handles seq2seq and decoder-only alike) gives g [L, H], the gradient
with respect to the L soft-prompt vectors. Replacing value v by v' at position i then
changes the loss by about

    g_i . (Dec(c_v') - Dec(c_v))          (= g_i . Dec(c_v' - c_v): the decoder is linear)

with c the codebook vectors and Dec the code decoder; `prompt_table` holds Dec(c_v) for
all K values, so one [L, H] x [H, K] product ranks every substitution of a sweep.
`GradientGuide` plugs into `bitwise_search` as its `select`: at each position it keeps the
`top` values with the lowest estimate (in their original order, so `top = K - 1` scores
exactly what the exhaustive search scores), and the search scores those exactly in one
batched call and keeps a change only on a strict exact improvement. The gradient is
recomputed whenever the code has changed (after every accepted change) and reused
otherwise. The gradient always comes from the loss, whatever the objective.

`ranking_recall` measures the ranking against an exhaustive trajectory: at each of its
positions, was the value the exact search found best among the guide's `top`?
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ctr.adapt.bitwise_search import Objective, SearchResult, Shot, bitwise_search, fingerprint
from ctr.core.model import CTRModel
from ctr.train.batching import Encoded, collate

GUIDES = ("none", "gradient")  # --guide: exhaustive, or gradient-ranked candidates
DEFAULT_TOP = 8  # values scored per position when --guide-top is not given (K - 1 if smaller)


def check_top(top: int, codebook_size: int | None = None, flag: str = "--guide-top") -> None:
    """`top` must score something and leave something out: 1 <= top <= K - 1 (without K,
    only the lower bound is checked)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"{flag} must be an integer >= 1 (values scored exactly per position, "
                         f"at most K-1), got {top!r}")
    if codebook_size is not None and top > codebook_size - 1:
        raise ValueError(f"{flag} {top} is more than K-1 = {codebook_size - 1} (K = {codebook_size} "
                         f"codebook values; K-1 already scores every other value, as --guide none "
                         f"does)")


def resolve_top(top: int | None, codebook_size: int, flag: str = "--guide-top") -> int:
    """The checked `top`; None: DEFAULT_TOP, or K - 1 for a smaller codebook."""
    top = min(DEFAULT_TOP, codebook_size - 1) if top is None else top
    check_top(top, codebook_size, flag)
    return top


def check_guide(guide: str, flag: str = "--guide") -> None:
    if guide not in GUIDES:
        raise ValueError(f"{flag} must be one of {GUIDES}, got {guide!r}")


@torch.no_grad()
def prompt_table(model: CTRModel) -> torch.Tensor:
    """Dec(c_v) for every value v: the soft-prompt vector [K, H] each value decodes to."""
    book = model.quantizer.weight.detach()
    table = model.decoder(book.to(model.decoder.weight.dtype))
    return table.to(torch.promote_types(table.dtype, torch.float32))  # bf16 -> fp32; fp64 stays


def loss_and_gradient(model: CTRModel, shots: Sequence[Shot], prompt: torch.Tensor,
                      batch_size: int = 8) -> tuple[float, torch.Tensor]:
    """Summed target loss of the gold choices (what `ShotObjective("loss")` computes) under
    a continuous prompt [L, H], and its gradient [L, H]. The backbone adapter builds the
    rows (seq2seq: encoder input and decoder labels; decoder-only: one joined row) and runs
    the pass; only the prompt needs a gradient (the parameters are frozen meanwhile).
    Rows go in batches of `batch_size`, halved on out-of-memory."""
    rows = [Encoded(0, s.input_ids, s.choices[s.label]) for s in shots]
    rows.sort(key=lambda r: -len(r.source))  # batches of about one length, as scoring does
    leaf = prompt.detach().to(torch.promote_types(prompt.dtype, torch.float32)).clone().requires_grad_(True)
    pad = model.tokenizer.pad_token_id
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # frozen for the pass: no activations kept for weight gradients
        p.requires_grad_(False)
    model.eval()
    total, grad, start = 0.0, torch.zeros_like(leaf), 0
    try:
        while start < len(rows):
            batch = collate(rows[start:start + batch_size], pad, model.adapter)
            batch.pop("task_ids")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            try:
                with torch.enable_grad():
                    loss = model(**batch, prompt=leaf.to(model.device)).token_loss_sum
                    (g,) = torch.autograd.grad(loss, leaf)  # only the prompt's path is walked
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                continue
            grad += g
            total += float(loss.detach())
            start += batch_size
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)
    return total, grad


class GradientGuide:
    """`select` for `bitwise_search`: the `top` values of a position ranked by the
    first-order estimate of the loss change, from one gradient per distinct code."""

    def __init__(self, model: CTRModel, shots: Sequence[Shot], top: int | None = None,
                 batch_size: int = 8, flag: str = "--guide-top"):
        top = resolve_top(top, model.config.codebook_size, flag)
        if not shots:
            raise ValueError("GradientGuide: no shots to take the gradient on")
        self.model, self.shots, self.top, self.batch_size = model, list(shots), top, batch_size
        self.table = prompt_table(model)  # [K, H]
        self._code: tuple[int, ...] | None = None
        self._estimates: torch.Tensor | None = None
        self.gradients = 0  # forward + backward passes over the shots
        self.gradient_seconds = 0.0
        self.positions = 0  # positions ranked

    def fingerprint(self) -> str:
        """What the recorded choices depend on besides the objective (model and shots: the
        objective's fingerprint, as `few_shot.adapt_task` gives it)."""
        return fingerprint({"guide": "gradient", "top": self.top})

    def gradient(self, code: Sequence[int]) -> tuple[float, torch.Tensor]:
        """(loss, gradient [L, H]) at a code's soft prompt."""
        prompt = self.table[torch.as_tensor(list(code))]  # [L, H] = Dec(c_code)
        t0 = time.perf_counter()
        loss, grad = loss_and_gradient(self.model, self.shots, prompt, self.batch_size)
        self.gradient_seconds += time.perf_counter() - t0
        self.gradients += 1
        return loss, grad.cpu()

    def estimates(self, code: Sequence[int]) -> torch.Tensor:
        """[L, K]: estimated loss change of putting value v at position i, g_i . (P_v - P_code[i])."""
        key = tuple(int(v) for v in code)
        if key != self._code:  # a new code (an accepted change): a new gradient
            _, grad = self.gradient(key)
            table = self.table.cpu()
            est = grad @ table.t()  # [L, K]
            self._estimates = est - est.gather(1, torch.tensor(key)[:, None])
            self._code = key
        return self._estimates  # type: ignore[return-value]

    def rank(self, code: Sequence[int], pos: int, trial_values: Sequence[int]) -> list[int]:
        """Trial values of `pos`, best estimate first (ties: the given order)."""
        est = self.estimates(code)[pos].tolist()
        order = sorted(range(len(trial_values)), key=lambda j: (est[trial_values[j]], j))
        return [trial_values[j] for j in order]

    def __call__(self, code: list[int], pos: int, trial_values: list[int]
                 ) -> tuple[list[int], dict[str, Any]]:
        if len(trial_values) <= self.top:  # all of them are scored (e.g. --values seen): no gradient
            return list(trial_values), {"candidates": len(trial_values), "scored": list(trial_values),
                                        "estimates": None}
        self.positions += 1
        est = self.estimates(code)[pos]
        chosen = set(self.rank(code, pos, trial_values)[:self.top])
        scored = [v for v in trial_values if v in chosen]  # the exhaustive order
        return scored, {"candidates": len(trial_values), "scored": scored,
                        "estimates": [round(float(est[v]), 6) for v in scored]}

    def stats(self) -> dict[str, Any]:
        return {"gradient_passes": self.gradients, "gradient_seconds": round(self.gradient_seconds, 3),
                "positions_ranked": self.positions}


def make_guide(guide: str, model: CTRModel, shots: Sequence[Shot], top: int | None = None,
               batch_size: int = 8, flag: str = "--guide-top") -> GradientGuide | None:
    """The `select` of a --guide choice: None (exhaustive) or a `GradientGuide`."""
    check_guide(guide)
    return GradientGuide(model, shots, top, batch_size, flag) if guide == "gradient" else None


def run_search(objective: Objective, starts: Sequence[Sequence[int]], values: Sequence[Sequence[int]],
               guide: GradientGuide | None = None, max_sweeps: int = 20, seed: int = 0,
               trajectory_path: str | Path | None = None, objective_id: str | None = None,
               on_step: Callable[[dict], None] | None = None) -> tuple[SearchResult, dict[str, Any]]:
    """Bitwise Search, exhaustive (`guide=None`) or guided, and its report: candidate
    evaluations, wall and CPU time, final objective (+ the guide's gradient passes)."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = bitwise_search(objective, starts, values, max_sweeps, seed, trajectory_path=trajectory_path,
                         on_step=on_step, objective_id=objective_id, select=guide)
    report = {"guide": "gradient" if guide else "none", "top": guide.top if guide else None,
              "evaluations": res.evaluations, "seconds": round(time.perf_counter() - t0, 3),
              "cpu_seconds": round(time.process_time() - c0, 3),  # this process only: robust to a busy machine
              "objective": res.objective, "sweeps": res.sweeps}
    if guide is not None:
        report.update(guide.stats())
    return res, report


def ranking_recall(guide: GradientGuide, trajectory: list[dict], values: Sequence[Sequence[int]],
                   tops: Sequence[int] | None = None) -> dict[str, Any]:
    """How often the exact best value of a position (recorded by an exhaustive search's
    trajectory) is among the guide's first `top` values, ranked at the code the exhaustive
    search had there. One gradient per distinct code on the trajectory; nothing is scored.
    `tops`: also report the recall at these other cut-offs (default: the guide's own)."""
    tops = sorted({guide.top, *(tops or [])})
    code = list(trajectory[0]["code"])
    ranks: list[int] = []
    for rec in trajectory[1:]:
        if "best_value" in rec and "scored" not in rec:  # an exhaustive step with a best value
            trial = [v for v in values[rec["position"]] if v != code[rec["position"]]]
            ranks.append(guide.rank(code, rec["position"], trial).index(rec["best_value"]))
        code = list(rec["code"])
    n = len(ranks)
    return {"positions": n, "recall": sum(r < guide.top for r in ranks) / n if n else None,
            "recall_at": {str(t): sum(r < t for r in ranks) / n if n else None for t in tops},
            "mean_rank_of_best": sum(ranks) / n + 1 if n else None, "ranks": ranks}
