"""`ctr train --max-minutes M`: a run that fits a time budget, with a clean final save.

How the budget is spent:
1. The clock starts when `train` starts (loading the data and the model count).
2. The first PROBE_STEPS optimizer steps are timed (the first one, with its one-off
   costs, is left out of the mean). No checkpoint is written before the decision.
3. After them the main process decides the step count: the steps that fit in the budget
   less a SAFETY share, the estimated final save and the periodic checkpoints
   (`fit_steps`), capped by --steps (the preset's unless given). The warmup keeps its
   share of the schedule (`scaled_warmup`), so warmup and cosine decay end on the new
   last step. Every process adopts the main process's numbers (a broadcast).
4. The decision sets the run's `Schedule` (the steps and warmup the trainer and its lr
   schedule follow; the config keeps the steps asked for) and is recorded beside the config:
   in every later checkpoint's trainer_state.json ("time_budget"), in the metrics record of
   the decision step ("budget_steps") and in `time_budget.json` in the output folder.
5. A guard checks after every step whether the next step, a checkpoint due with it and
   the final save would still end within the budget; if not, the run stops there with
   final/ saved and `time_budget.json` saying `ended_early_at` (the estimate was off,
   e.g. a slower node). The last periodic checkpoint stays for --resume.

Resume stays exact: a checkpoint holds the decision, and a resumed run takes its step
count and warmup from there (before the settings are compared) instead of timing anew,
so it continues the same schedule as the uninterrupted run and ends where that run would
have, whatever the speed of the new machine. Each launch's guard measures that launch
against its own --max-minutes.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator

from ctr.config import TrainConfig
from ctr.fileio import read_json, write_json
from ctr.train.checkpoint import STATE_FILE

PROBE_STEPS = 4  # steps timed before deciding
SAFETY = 0.05  # share of the budget left free for what the estimates miss
SAVE_OVERHEAD_S = 0.5  # a save's fixed cost, before any save has been timed
SAVE_BYTES_PER_S = 200e6  # assumed disk speed, before any save has been timed
BUDGET_FILE = "time_budget.json"
STATE_KEY = "time_budget"


def now() -> float:
    """The budget's clock (a function, so that tests can replace it)."""
    return time.monotonic()


def fit_steps(remaining_s: float, step_s: float, save_every: int, checkpoint_s: float,
              done: int, cap: int) -> int:
    """The step count, the `done` steps included, whose remaining steps and periodic
    checkpoints fit `remaining_s` seconds; never below `done` nor above `cap`."""
    per_step = max(step_s, 1e-9) + checkpoint_s / max(1, save_every)
    more = int(max(0.0, remaining_s) // per_step)
    return max(done, min(cap, done + more))


def scaled_warmup(warmup: int, steps: int, requested: int) -> int:
    """Warmup with the share of the schedule it had at `requested` steps (at least 1)."""
    if steps >= requested or warmup <= 0:
        return warmup
    return min(steps, max(1, round(warmup * steps / requested)))


def save_estimates(model: torch.nn.Module) -> tuple[float, float]:
    """(final save, checkpoint save) seconds guessed from the bytes each writes: the CTR
    weights and what of the backbone is saved; a checkpoint adds two Adam moments per
    trainable parameter."""
    config = getattr(model, "config", None)
    whole = bool(getattr(config, "backbone_trained", False))
    saved = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                if whole or p.requires_grad or not n.startswith("backbone."))
    moments = sum(p.numel() * 4 * 2 for p in model.parameters() if p.requires_grad)
    final = SAVE_OVERHEAD_S + saved / SAVE_BYTES_PER_S
    return final, final + moments / SAVE_BYTES_PER_S


@dataclass
class Schedule:
    """The steps a run takes and its lr schedule's shape: the resolved config's, unless
    --max-minutes decides fewer steps (the config keeps the steps asked for)."""

    steps: int
    warmup_steps: int
    min_lr_ratio: float


class TimeBudget:
    """The budget of one launch; inactive (every method a no-op) without --max-minutes,
    except that a decision found in a resumed checkpoint is still adopted."""

    def __init__(self, cfg: TrainConfig, acc: Accelerator, output_dir: Path):
        self.cfg, self.acc, self.out = cfg, acc, Path(output_dir)
        self.schedule = Schedule(cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
        self.limit_s = cfg.max_minutes * 60 if cfg.max_minutes else None
        self.started = now()
        self.decision: dict[str, Any] | None = None
        self.step_times: list[float] = []
        self.save_times: list[float] = []
        self.last = self.started
        self.done = 0
        self.ended_early_at: int | None = None

    @property
    def active(self) -> bool:
        return self.limit_s is not None

    @property
    def may_save(self) -> bool:
        """Periodic checkpoints wait for the decision, so that each one holds it."""
        return not self.active or self.decision is not None

    def adopt(self, checkpoint: Path) -> None:
        """Take the step count and warmup a resumed checkpoint's run decided."""
        decision = read_json(Path(checkpoint) / STATE_FILE).get(STATE_KEY)
        if decision:
            self.decision = dict(decision)
            self.schedule.steps, self.schedule.warmup_steps = decision["steps"], decision["warmup_steps"]

    def state(self) -> dict[str, Any]:
        """What a checkpoint's trainer_state.json records."""
        return {STATE_KEY: self.decision} if self.decision else {}

    def begin(self, done: int) -> None:
        self.last, self.done = now(), done

    def after_step(self, done: int, model: torch.nn.Module) -> dict[str, Any]:
        """Call after each optimizer step, before the scheduler steps; returns the fields
        the metrics record of this step gets (the decision, at the decision step)."""
        t = now()
        self.step_times.append(t - self.last)
        self.last, self.done = t, done
        if not self.active or self.decision is not None or len(self.step_times) < PROBE_STEPS \
                or done >= self.schedule.steps:
            return {}
        return self._decide(done, model)

    def _decide(self, done: int, model: torch.nn.Module) -> dict[str, Any]:
        cfg = self.cfg
        step_s = statistics.mean(self.step_times[1:])
        elapsed = now() - self.started
        final_s, checkpoint_s = save_estimates(model)
        remaining = self.limit_s * (1 - SAFETY) - elapsed - final_s
        steps = fit_steps(remaining, step_s, cfg.save_every, checkpoint_s, done, cfg.steps)
        warmup = scaled_warmup(cfg.warmup_steps, steps, cfg.steps)
        steps, warmup = self._from_main(steps, warmup)
        self.decision = {"max_minutes": cfg.max_minutes, "steps": steps, "warmup_steps": warmup,
                         "requested_steps": cfg.steps, "requested_warmup_steps": cfg.warmup_steps,
                         "decided_at_step": done, "step_time_s": round(step_s, 6),
                         "elapsed_s": round(elapsed, 3), "final_save_s_estimate": round(final_s, 3),
                         "checkpoint_save_s_estimate": round(checkpoint_s, 3)}
        self.schedule.steps, self.schedule.warmup_steps = steps, warmup
        if self.acc.is_main_process:
            write_json(self.out / BUDGET_FILE, self.decision)
            print(f"[ctr] --max-minutes {cfg.max_minutes}: {step_s:.3f}s a step -> {steps} steps "
                  f"(warmup {warmup}; asked {self.decision['requested_steps']})", flush=True)
        return {"budget_steps": steps}

    def _from_main(self, *values: int) -> tuple[int, ...]:
        """The main process's numbers on every process."""
        if self.acc.num_processes == 1:
            return values
        from accelerate.utils import broadcast
        t = broadcast(torch.tensor(values, dtype=torch.long, device=self.acc.device), from_process=0)
        return tuple(int(v) for v in t.cpu())

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Time a save (it is left out of the step times and sizes later estimates)."""
        t = now()
        yield
        self.save_times.append(now() - t)
        self.last = now()

    def out_of_time(self, done: int, model: torch.nn.Module) -> bool:
        """Whether to stop after step `done` so that the final save ends in time (the same
        answer on every process)."""
        if not self.active or done >= self.schedule.steps:
            return False
        final_s, checkpoint_s = save_estimates(model)
        if self.save_times:
            final_s = checkpoint_s = max(self.save_times)
        next_s = max(self.step_times[-3:])
        if (done + 1) % self.cfg.save_every == 0:
            next_s += checkpoint_s
        stop = int(now() - self.started + next_s + final_s > self.limit_s)
        if self._from_main(stop)[0]:
            self.ended_early_at = done
            return True
        return False

    def finish(self) -> None:
        """After the final save: write down what the run did (main process)."""
        if not (self.active or self.decision) or not self.acc.is_main_process:
            return
        record = dict(self.decision or {"max_minutes": self.cfg.max_minutes, "steps": self.schedule.steps,
                                        "warmup_steps": self.schedule.warmup_steps,
                                        "decided_at_step": None})  # ended before the probe did
        record.update(steps_done=self.done, ended_early_at=self.ended_early_at,
                      launch_elapsed_s=round(now() - self.started, 3),
                      final_save_s=round(self.save_times[-1], 3) if self.save_times else None)
        write_json(self.out / BUDGET_FILE, record)
