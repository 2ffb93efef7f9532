"""Resume after a kill: a truncated metrics line, checkpoint fallback to the newest complete one."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctr.train.checkpoint import latest_checkpoint
from ctr.config import TrainConfig
from ctr.train.trainer import train

L, K = 4, 8


@pytest.fixture(scope="module")
def runs(tiny_paths, tmp_path_factory):
    """The task file, an uninterrupted run, and a run killed after step 5 (checkpoints 2, 4),
    trained once for the module; tests copy the killed run before touching it."""
    from conftest import write_tasks
    root = tmp_path_factory.mktemp("runs")
    task_file = write_tasks(root / "tasks.jsonl")
    full = train(cfg_for(tiny_paths, task_file, root / "full"))
    train(cfg_for(tiny_paths, task_file, root / "cut"), stop_after=5)
    return task_file, full, root / "cut"


def killed_copy(runs, dest: Path) -> Path:
    shutil.copytree(runs[2], dest)
    return dest


def cfg_for(tiny_paths, task_file, out, **kw):
    base = dict(output_dir=str(out), model=str(tiny_paths["llama"]), preset="tiny",
                train_files=[str(task_file)], max_source_len=32, max_target_len=8,
                code_length=3, codebook_size=8, save_every=2)
    base.update(kw)
    return TrainConfig.from_flags(**base)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "ctr_weights.safetensors")), load_file(str(b / "ctr_weights.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def strip_metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "step_time"}
            for x in path.read_text().splitlines()]


def cut_last_line(path: Path) -> None:
    """What a kill in the middle of append_jsonl leaves: half of the last line, no newline."""
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    path.write_text(text[: len(text) - len(last) - 1] + last[: len(last) // 2])


# ---- JSONL ------------------------------------------------------------------------------
def test_truncated_metrics_line_resumes_to_the_uninterrupted_run(tiny_paths, runs, tmp_path):
    task_file, full, _ = runs
    cut = killed_copy(runs, tmp_path / "cut")
    metrics = cut / "metrics.jsonl"
    cut_last_line(metrics)  # the record of step 5, cut mid-write
    with pytest.warns(RuntimeWarning, match="metrics.jsonl:5: dropped a truncated last line"):
        resumed = train(cfg_for(tiny_paths, task_file, cut, resume=True))
    same_weights(full, resumed)
    assert strip_metrics(full.parent / "metrics.jsonl") == strip_metrics(metrics)


def test_a_run_killed_before_its_first_checkpoint_starts_its_metrics_over(tiny_paths, runs, tmp_path):
    """--resume without a checkpoint starts fresh, and so does metrics.jsonl: the dead
    run's records (steps 1-5 here) must not stay in front of the new ones."""
    task_file, full, _ = runs
    cut = killed_copy(runs, tmp_path / "cut")
    for c in cut.glob("checkpoint-*"):
        shutil.rmtree(c)
    again = train(cfg_for(tiny_paths, task_file, cut, resume=True))
    same_weights(full, again)
    assert strip_metrics(full.parent / "metrics.jsonl") == strip_metrics(cut / "metrics.jsonl")


@pytest.mark.parametrize("earlier", ["checkpoints", "final"])
def test_a_fresh_start_over_an_earlier_run_is_refused_and_loses_nothing(tiny_paths, runs, tmp_path,
                                                                       earlier):
    """Without --resume, a folder that holds a cut run's checkpoints (or a finished run's
    final/) is an error naming the folder and --resume; its files stay byte for byte."""
    task_file, full, _ = runs
    folder = killed_copy(runs, tmp_path / "cut") if earlier == "checkpoints" else \
        shutil.copytree(full.parent, tmp_path / "done")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=rf"--output-dir {re.escape(str(folder))} holds an earlier run .*--resume"):
        train(cfg_for(tiny_paths, task_file, folder))
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_corrupt_middle_metrics_line_stops_the_resume(tmp_path):
    from ctr.train.trainer import _truncate_metrics
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        _truncate_metrics(p, 3)


# ---- checkpoints -------------------------------------------------------------------------
def break_missing_state(c):
    (c / "trainer_state.json").unlink()


def break_invalid_state(c):
    (c / "trainer_state.json").write_text('{"step": 4, "optim')


def break_missing_optimizer(c):
    (c / "optimizer.safetensors").unlink()


def break_truncated_weights(c):
    w = c / "model" / "ctr_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-16])


@pytest.mark.parametrize("damage", [break_missing_state, break_invalid_state, break_missing_optimizer,
                                    break_truncated_weights])
def test_latest_checkpoint_falls_back_to_the_newest_complete_one(tiny_paths, runs, tmp_path,
                                                                 capsys, damage):
    task_file, full, _ = runs
    run = killed_copy(runs, tmp_path / "run")
    newest, older = run / "checkpoint-0000004", run / "checkpoint-0000002"
    assert latest_checkpoint(run) == newest
    damage(newest)
    capsys.readouterr()
    assert latest_checkpoint(run) == older
    assert f"{newest}: incomplete checkpoint" in capsys.readouterr().out
    if damage is break_truncated_weights:  # and the resume from there is the uninterrupted run
        resumed = train(cfg_for(tiny_paths, task_file, run, resume=True))
        same_weights(full, resumed)
        assert strip_metrics(full.parent / "metrics.jsonl") == strip_metrics(run / "metrics.jsonl")


def test_resume_compares_the_module_and_the_asked_steps_of_either_config_layout(tmp_path):
    from ctr.config import CTRConfig
    from ctr.train.checkpoint import STATE_FILE, check_resume
    ckpt = tmp_path / "checkpoint-0000004"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "model" / "ctr_config.json").write_text(json.dumps({"task_names": ["a", "b"]}))
    run = TrainConfig.from_flags(preset="tiny", code_length=3, codebook_size=8, steps=40).resolved()

    def state(config, **extra):
        (ckpt / STATE_FILE).write_text(json.dumps({"config": config, **extra}))
    state(dataclasses.asdict(run))
    check_resume(ckpt, run, ["a", "b"])
    # the same module given whole in Python (no recipe name recorded): the same run
    same = TrainConfig(preset="tiny", steps=40, ctr=CTRConfig(code_length=3, codebook_size=8)).resolved()
    check_resume(ckpt, same, ["a", "b"])
    other = TrainConfig.from_flags(preset="tiny", code_length=3, codebook_size=9, steps=40).resolved()
    with pytest.raises(ValueError, match="--codebook-size 9 .checkpoint: 8."):
        check_resume(ckpt, other, ["a", "b"])
    # a config with the module's options at the top level, whose steps a time budget decided
    flat = {**{k: v for k, v in dataclasses.asdict(run).items() if k != "ctr"},
            **run.ctr.options(), "steps": 12, "warmup_steps": 1}
    state(flat, time_budget={"steps": 12, "warmup_steps": 1, "requested_steps": 40,
                             "requested_warmup_steps": run.warmup_steps})
    check_resume(ckpt, run, ["a", "b"])
    with pytest.raises(ValueError, match="--codebook-size 9 .checkpoint: 8."):
        check_resume(ckpt, other, ["a", "b"])
