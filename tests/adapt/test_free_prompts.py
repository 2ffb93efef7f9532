"""`ctr free-prompts`: multi-task prompt tuning of a frozen LM (the ceiling of a stage-1
codebook), saved as a CTR model whose task codes give back each task's trained prompt."""
from __future__ import annotations

import json

import pytest
import torch

from ctr.adapt.code_ensemble import ZeroLabelConfig, select_code
from ctr.adapt.common import candidate_codes
from ctr.adapt.free_prompts import (METHOD, FreePromptConfig, initial_prompts, prompts_as_ctr_model,
                                    train_free_prompts)
from ctr.cli import main as cli_main
from ctr.config import CTRConfig
from ctr.core.backbone import load_backbone
from ctr.core.model import CTRModel
from ctr.core.testing import save_tiny_backbone
from ctr.inference.scoring import RankScorer

from adapt_support import need_data, small_data_dir  # tests/adapt is on sys.path under pytest
from conftest import write_tasks


def trained_prompts(folder) -> torch.Tensor:
    model = CTRModel.from_pretrained(folder / "final")
    return model.soft_prompt(model.config.num_tasks, torch.arange(model.config.num_tasks))[0].detach()


def run(tmp_path, backbone, name: str, seed: int = 0, **kw) -> dict:
    cfg = FreePromptConfig(output_dir=str(tmp_path / name), model=str(backbone),
                           train_files=[str(write_tasks(tmp_path / "tasks.jsonl"))], steps=4,
                           batch_size=4, warmup_steps=1, lr=0.1, prompt_length=3, probe_batches=1,
                           seed=seed, **kw)
    return train_free_prompts(cfg)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_free_prompts_learn_reproduce_and_load_as_codes(tiny_paths, tmp_path, arch):
    summary = run(tmp_path, tiny_paths[arch], "a")
    out = tmp_path / "a"
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["method"] == METHOD and cfg["steps"] == 4 and cfg["seed"] == 0  # what the evidence reads
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["grad_norm"] > 0 for r in log)
    assert summary["tasks"] == ["task0", "task1", "task2"] and summary["probe_lm_loss"] > 0
    first = trained_prompts(out)
    model = CTRModel.from_pretrained(out / "final")
    start = initial_prompts(model, 3, 3, seed=0)
    assert first.shape == start.shape and not torch.allclose(first, start)  # the prompts learned
    assert model.code_table() == {f"task{t}": [3 * t, 3 * t + 1, 3 * t + 2] for t in range(3)}
    if arch != "llama":
        return
    # the same seed gives the same prompts (the evidence run re-runs steps); another does not
    run(tmp_path, tiny_paths[arch], "b")
    assert torch.equal(trained_prompts(tmp_path / "b"), first)
    run(tmp_path, tiny_paths[arch], "c", seed=1)
    assert not torch.allclose(trained_prompts(tmp_path / "c"), first)


def test_a_wrapped_prompt_scores_as_the_prompt_itself(tmp_path):
    backbone = save_tiny_backbone(tmp_path / "tiny", "llama", hidden=8)
    bb, tok = load_backbone(str(backbone))
    base = CTRModel(bb, CTRConfig(use_codes=False, backbone=str(backbone)), tok)
    prompts = torch.randn(12, 2, 8, generator=torch.Generator().manual_seed(0)) * 3  # 12 tasks > 8 dims
    tasks = [f"t{i}" for i in reversed(range(12))]  # not sorted: the given order is kept
    model = prompts_as_ctr_model(prompts, tasks, base)
    model.save_pretrained(tmp_path / "ctr")
    model = CTRModel.from_pretrained(tmp_path / "ctr")
    assert model.config.task_names == tasks
    assert json.loads((tmp_path / "ctr" / "code_table.json").read_text()) == {
        t: [2 * i, 2 * i + 1] for i, t in enumerate(tasks)}
    x = torch.tensor([[5, 6, 7, 8, 9]])
    for t in range(12):
        via_code = model(x, torch.ones_like(x), labels=x, task_ids=torch.tensor([t])).loss
        via_prompt = base(x, torch.ones_like(x), labels=x, prompt=prompts[t:t + 1]).loss
        assert via_code.item() == pytest.approx(via_prompt.item(), abs=1e-5)
    with pytest.raises(ValueError, match="12 prompts for 11 task names"):
        prompts_as_ctr_model(prompts, tasks[:-1], base)


def test_the_code_ensemble_scores_free_prompts_like_codes(tiny_paths, tmp_path):
    """The candidates of `ctr zero-label --checkpoint FREE_PROMPTS` are the tasks' prompts."""
    need_data()
    data = str(small_data_dir(tmp_path / "data", {"glue_sst2": 20}))
    run(tmp_path, tiny_paths["llama"], "a")
    model = CTRModel.from_pretrained(tmp_path / "a" / "final").eval()
    candidates = candidate_codes(model)
    assert candidates == [([3 * t, 3 * t + 1, 3 * t + 2], [f"task{t}"]) for t in range(3)]
    cfg = ZeroLabelConfig(tasks=["glue_sst2"], n_inputs=4, max_templates=1, data_dir=data)
    sel = select_code(model, "glue_sst2", cfg, candidates, RankScorer(model, 8, progress=False))
    assert sel["inputs"] == 4 and len(sel["ranked"]) == 3 and sel["code"] in [c for c, _ in candidates]


def test_the_command_line_trains_and_reports(tiny_paths, tmp_path, capsys):
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    assert cli_main(["free-prompts", "--model", str(tiny_paths["llama"]), "--train-files", str(tasks),
                     "--steps", "2", "--batch-size", "2", "--prompt-length", "2", "--probe-batches", "0",
                     "--output-dir", str(tmp_path / "run")]) == 0
    assert "ctr zero-label --checkpoint" in capsys.readouterr().out
    assert (tmp_path / "run" / "final" / "ctr_config.json").exists()
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        FreePromptConfig(steps=0)
