"""`ctr train --max-minutes M`: the step count is decided from the timed first steps, the
run ends with a loadable final/, and a resumed run keeps the decided schedule."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ctr.config import TrainConfig
from ctr.core.loading import load_model
from ctr.train import time_budget
from ctr.train.time_budget import BUDGET_FILE, PROBE_STEPS, fit_steps, scaled_warmup
from ctr.train.trainer import train


def cfg_for(paths, task_file, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(paths["llama"]), preset="tiny",
                train_files=[str(task_file)], max_source_len=32, max_target_len=8,
                code_length=3, codebook_size=8, save_every=2, steps=40, warmup_steps=8)
    base.update(kw)
    return TrainConfig.from_flags(**base)


def records(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_fit_steps_and_scaled_warmup():
    # 100 s left, 1 s a step, a 4 s checkpoint every 4 steps: 2 s a step in all
    assert fit_steps(100, 1.0, 4, 4.0, done=4, cap=1000) == 54
    assert fit_steps(100, 1.0, 4, 4.0, done=4, cap=30) == 30  # --steps caps it
    assert fit_steps(-5, 1.0, 4, 4.0, done=4, cap=30) == 4  # no time left: stop where it is
    assert scaled_warmup(320, 1000, 10000) == 32  # the warmup keeps its 3.2 %
    assert scaled_warmup(320, 10000, 10000) == 320
    assert scaled_warmup(10, 3, 1000) == 1


def test_a_tiny_budget_ends_with_a_loadable_model(tiny_paths, task_file, tmp_path):
    out = tmp_path / "run"
    final = train(cfg_for(tiny_paths, task_file, out, steps=100000, max_minutes=0.03))
    assert final == out / "final"
    model = load_model(str(out))  # loadable, as `ctr eval --model RUN` loads it
    assert model.config.task_names == ["task0", "task1", "task2"]
    budget = json.loads((out / BUDGET_FILE).read_text())
    steps_done = budget["steps_done"]  # how far it got depends on the machine: no exact value
    assert 1 <= steps_done <= budget["steps"] <= 100000
    assert budget["ended_early_at"] in (None, steps_done)  # the guard, when the estimate was off
    if budget["decided_at_step"] is not None:  # it got through the probe
        assert budget["requested_steps"] == 100000 and budget["steps"] < 100000
    assert records(out)[-1]["step"] == steps_done
    # the decision is recorded beside the config, which keeps the steps asked for
    assert json.loads((out / "train_config.json").read_text())["steps"] == 100000
    assert json.loads((out / "resolved_config.json").read_text())["steps"] == 100000


class FakeClock:
    """A clock that moves only when a step ends, by `cost(step)` seconds: the decision and
    the guard then act the same in every run."""

    def __init__(self, cost):
        self.t, self.cost = 0.0, cost

    def __call__(self) -> float:
        return self.t


def fake_time(monkeypatch, cost) -> FakeClock:
    clock = FakeClock(cost)
    real = time_budget.TimeBudget.after_step

    def after_step(self, done, model):
        clock.t += clock.cost(done)
        return real(self, done, model)
    monkeypatch.setattr(time_budget, "now", clock)
    monkeypatch.setattr(time_budget.TimeBudget, "after_step", after_step)
    monkeypatch.setattr(time_budget, "save_estimates", lambda model: (1.5, 1.5))
    return clock


def test_the_decision_is_recorded_and_kept_on_resume(tiny_paths, task_file, tmp_path, monkeypatch):
    fake_time(monkeypatch, lambda step: 1.0)  # 1 s a step; 60 s: 0.95 x 60 - 4 - 1.5 s left
    full = train(cfg_for(tiny_paths, task_file, tmp_path / "full", max_minutes=1))
    budget = json.loads((tmp_path / "full" / BUDGET_FILE).read_text())
    steps, warmup = budget["steps"], budget["warmup_steps"]
    assert steps == PROBE_STEPS + int((0.95 * 60 - PROBE_STEPS - 1.5) // (1.0 + 1.5 / 2)) < 40
    assert budget["decided_at_step"] == PROBE_STEPS and budget["step_time_s"] == 1.0
    assert warmup == scaled_warmup(8, steps, 40) and budget["ended_early_at"] is None
    rs = records(tmp_path / "full")
    assert [r["step"] for r in rs] == list(range(1, steps + 1))
    assert [r.get("budget_steps") for r in rs if "budget_steps" in r] == [steps]
    assert rs[-1]["lr"] == pytest.approx(TrainConfig(preset="tiny").resolved().lr * 0.1)  # decay ended
    first_ckpt = min((tmp_path / "full").glob("checkpoint-*"))
    assert int(first_ckpt.name.split("-")[1]) >= PROBE_STEPS  # none before the decision
    state = json.loads((first_ckpt / "trainer_state.json").read_text())
    # the decision beside the run's config, which keeps the steps asked for
    assert state["time_budget"]["steps"] == steps and state["config"]["steps"] == 40

    # killed after step 6, resumed on a machine 5x faster: the same schedule to the same end
    fake_time(monkeypatch, lambda step: 1.0)
    train(cfg_for(tiny_paths, task_file, tmp_path / "cut", max_minutes=1), stop_after=PROBE_STEPS + 2)
    fake_time(monkeypatch, lambda step: 0.2)
    resumed = train(cfg_for(tiny_paths, task_file, tmp_path / "cut", max_minutes=1, resume=True))
    a, b = load_file(str(full / "ctr_weights.safetensors")), load_file(str(resumed / "ctr_weights.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if k != "step_time"} for r in rs]
    assert strip(records(tmp_path / "cut")) == strip(rs)
    assert json.loads((tmp_path / "cut" / BUDGET_FILE).read_text())["steps"] == steps


def test_the_guard_stops_a_run_that_would_overrun(tiny_paths, task_file, tmp_path, monkeypatch):
    """Steps that turn 5x slower after the decision: the run stops early, final/ in time,
    and its last step is in metrics.jsonl even off --log-every."""
    clock = fake_time(monkeypatch, lambda step: 1.0 if step <= PROBE_STEPS else 5.0)
    out = tmp_path / "run"
    train(cfg_for(tiny_paths, task_file, out, max_minutes=1, log_every=1000))
    budget = json.loads((out / BUDGET_FILE).read_text())
    assert PROBE_STEPS < budget["ended_early_at"] < budget["steps"]
    assert [r["step"] for r in records(out)] == [budget["steps_done"]] == [budget["ended_early_at"]]
    assert records(out)[-1]["lm_loss"] > 0 and records(out)[-1]["tokens"] > 0
    assert clock.t <= 60  # the budget held (the fake saves take no time)
    assert load_model(str(out)).config.num_tasks == 3
    # the run goes on to the decided end from its last checkpoint
    shutil.rmtree(out / "final")
    fake_time(monkeypatch, lambda step: 0.2)
    train(cfg_for(tiny_paths, task_file, out, max_minutes=1, resume=True))
    assert records(out)[-1]["step"] == budget["steps"]
