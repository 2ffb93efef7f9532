"""scripts/diagnose_stage1.py --mode free: the free-prompt ceiling of the evidence table
(scripts/evidence_smollm2.sh trains it, scripts/free_prompts_to_ctr.py wraps it for `ctr
zero-label`), on a tiny random Llama and two real T0 tasks."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from ctr.core.model import CTRModel
from ctr.tasks.mixture import data_dir

ROOT = Path(__file__).resolve().parents[2]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"scripts/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TASKS = ["ag_news_classify", "glue_qqp_answer"]


def free_run(backbone: Path, out: Path, seed: int = 0) -> dict:
    script("diagnose_stage1").main([
        "--mode", "free", "--model", str(backbone), "--tasks", *TASKS, "--steps", "4", "--batch", "2",
        "--warmup", "1", "--probe-batches", "1", "--lr", "0.1", "--seed", str(seed), "--out", str(out)])
    return torch.load(out / "prompts.pt")


def test_free_prompts_train_reproduce_and_wrap(tiny_paths, tmp_path):
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"data not available: {e}")
    backbone = tiny_paths["llama"]
    first = free_run(backbone, tmp_path / "a")
    H = AutoConfig.from_pretrained(backbone).hidden_size
    assert first["tasks"] == TASKS and first["prompts"].shape == (2, 10, H)
    log = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 4
    assert all(r["grad"]["prompt"] > 0 and r["rel_prompt_change_mean"] > 0 for r in log)  # the prompts learn
    summary = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    assert summary["args"]["tasks"] == TASKS and summary["args"]["seed"] == 0  # what the evidence reads
    # the same seed gives the same prompts (the evidence resumes and re-runs steps); another does not
    assert torch.equal(free_run(backbone, tmp_path / "b")["prompts"], first["prompts"])
    assert not torch.equal(free_run(backbone, tmp_path / "c", seed=1)["prompts"], first["prompts"])
    # wrapped as a CTR folder, each task's code gives its trained prompt back
    script("free_prompts_to_ctr").main([str(tmp_path / "a" / "prompts.pt"), str(tmp_path / "ctr"),
                                        "--model", str(backbone)])
    model = CTRModel.from_pretrained(tmp_path / "ctr")
    soft, _, _ = model.soft_prompt(2, torch.arange(2))
    assert model.config.task_names == TASKS
    assert torch.allclose(soft, first["prompts"], atol=1e-4)
