"""scripts/free_prompts_to_ctr.py: free per-task prompts wrapped as a CTR folder must give every
task its own prompt back, exactly, through the code path `ctr zero-label` uses."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ctr.core.model import CTRModel
from ctr.core.testing import save_tiny_backbone

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("free_prompts_to_ctr", ROOT / "scripts/free_prompts_to_ctr.py")
fp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fp)


def test_wrapped_prompts_round_trip(tmp_path):
    backbone = save_tiny_backbone(tmp_path / "tiny", "llama", hidden=32)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randn(3, 4, 32, generator=gen) * 3
    tasks = ["task_b", "task_a", "task_c"]  # not sorted: the order of prompts.pt is kept
    torch.save({"prompts": prompts, "tasks": tasks}, tmp_path / "prompts.pt")
    fp.main([str(tmp_path / "prompts.pt"), str(tmp_path / "ctr"), "--model", str(backbone)])
    model = CTRModel.from_pretrained(tmp_path / "ctr")
    assert model.config.task_names == tasks
    table = json.loads((tmp_path / "ctr" / "code_table.json").read_text())
    assert table == {t: list(range(4 * i, 4 * i + 4)) for i, t in enumerate(tasks)}
    soft, _, _ = model.soft_prompt(3, torch.arange(3))
    assert torch.allclose(soft, prompts, atol=1e-5)
    # and the wrapped model's task code scores like the free prompt it carries
    x = torch.tensor([[5, 6, 7, 8, 9]])
    bare = CTRModel(model.backbone, type(model.config)(use_codes=False), model.tokenizer)
    for t in range(3):
        via_code = model(x, torch.ones_like(x), labels=x, task_ids=torch.tensor([t])).loss
        via_prompt = bare(x, torch.ones_like(x), labels=x, prompt=prompts[t:t + 1]).loss
        assert via_code.item() == pytest.approx(via_prompt.item(), abs=1e-5)


def test_more_tasks_than_the_embedding_width_is_refused(tmp_path):
    backbone = save_tiny_backbone(tmp_path / "tiny", "llama", hidden=8)
    prompts = torch.randn(12, 2, 8)  # 12 tasks > 8 dimensions: no exact encoder
    with pytest.raises(SystemExit, match="not their own rows|differ"):
        fp.wrap(prompts, [f"t{i}" for i in range(12)], str(backbone))
