"""What the training loop keeps of each step on the device, and reads on the host only when due.

Reading a device tensor on the host (`.item()`, `float(t)`) waits until the device has run
everything queued before it, so the loop reads nothing on most steps: this step's loss
sums and a flag for non-finite losses or gradient norms stay on the device, and are read
on the steps that log, before each checkpoint and before the final save. A non-finite
value stops training at the read, before that step's update; the updates of the steps
between the previous read and it are applied (the error names those steps).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import torch


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the last checkpoint on disk is the last good state."""


class StepStats:
    def __init__(self, device: torch.device, vq_weight: float,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.device, self.vq_weight, self.reduce = device, vq_weight, reduce
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.unread_from: int | None = None  # first step whose flag was not read yet

    def begin(self, step: int) -> None:
        self.sums = torch.zeros(2, dtype=self.dtype, device=self.device)  # lm, vq of this step
        if self.unread_from is None:
            self.unread_from = step

    def add(self, lm: torch.Tensor, vq: torch.Tensor) -> None:
        """This process's share of one forward pass's LM and VQ loss (device side)."""
        self.sums += torch.stack([lm.detach(), vq.detach()]).to(self.dtype)

    def end(self, grad_norm: torch.Tensor) -> None:
        loss = self.sums[0] + self.vq_weight * self.sums[1]
        self.bad |= ~(torch.isfinite(loss) & torch.isfinite(grad_norm))

    def read(self, step: int, last_good, updated: bool = False) -> dict[str, float]:
        """The step's losses over all processes (a host sync); raises TrainingDiverged when
        a loss or gradient norm since the last read was not finite (`updated`: read after
        this step's update)."""
        values = torch.cat([self.sums, self.bad.to(self.dtype)[None]])
        if self.reduce is not None:
            values = self.reduce(values)
        lm, vq, bad = values.cpu().tolist()
        first, self.unread_from = self.unread_from, None
        if bad:
            where = f"at step {step}" if first == step else (
                f"in steps {first}-{step} (read every --log-every steps and before each save; the "
                f"updates of steps {first}-{step - 1} were applied)")
            this = "its update was applied" if updated else "no update applied"
            raise TrainingDiverged(f"non-finite loss/gradient {where}; step {step}: {this} (loss "
                                   f"{lm + self.vq_weight * vq}). Last good checkpoint: "
                                   f"{last_good or 'none'}")
        return {"loss": lm + self.vq_weight * vq, "lm_loss": lm, "vq_loss": vq}


class StepClock:
    """Mean seconds per step since the last lap, the time spent saving left out."""

    def __init__(self, done: int):
        self.t, self.done, self.saving = time.time(), done, 0.0

    def lap(self, done: int) -> float:
        now = time.time()
        mean = (now - self.t - self.saving) / max(1, done - self.done)
        self.t, self.done, self.saving = now, done, 0.0
        return mean

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t = time.time()
        yield
        self.saving += time.time() - t
