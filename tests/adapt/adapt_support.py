"""Shared helpers of the adaptation tests: a tiny CTR model, a tiny trained run, small data folders."""
from __future__ import annotations


import pytest
import torch

from ctr.config import CTRConfig
from ctr.tasks.mixture import data_dir
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone

L, K = 4, 8


def ctr_model(arch="llama", n_tasks=3) -> CTRModel:
    backbone, tok = tiny_backbone(arch)
    torch.manual_seed(0)
    cfg = CTRConfig(code_length=L, codebook_size=K, task_names=[f"t{i}" for i in range(n_tasks)],
                    codebook_init_scale=1.0)
    return CTRModel(backbone, cfg, tok).eval()


def need_data():
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"held-out data not available: {e}")


def train_tiny_run(run, tiny_paths, task_file):
    """A stage-1 run of the tiny llama on the small task file (codes L x K)."""
    from ctr.config import TrainConfig
    from ctr.train.trainer import train
    train(TrainConfig.from_flags(output_dir=str(run), model=str(tiny_paths["llama"]), preset="tiny",
                                 train_files=[str(task_file)], code_length=L, codebook_size=K, max_source_len=32))
    return run


def saved_checkpoint(path, tiny_paths):
    """A CTR checkpoint of the tiny llama (random codes, no training): for the CLI."""
    from ctr.core.backbone import load_backbone
    backbone, tok = load_backbone(str(tiny_paths["llama"]))
    torch.manual_seed(0)
    cfg = CTRConfig(code_length=L, codebook_size=K, task_names=[f"t{i}" for i in range(3)],
                    codebook_init_scale=1.0, backbone=str(tiny_paths["llama"]))
    CTRModel(backbone, cfg, tok).save_pretrained(path)
    return path


def small_data_dir(root, n_rows: dict[str, int]):
    """A copy of the real data folder with the first n rows of each task's splits (and
    its templates): small enough to evaluate whole."""
    import shutil
    from ctr.tasks.registry import get_task
    src = data_dir()
    for name, n in n_rows.items():
        task = get_task(name)
        for split in [task.eval_split] + ([task.train_split] if task.train_split else []):
            rows = (src / task.data_folder / split).read_text().splitlines(keepends=True)[:n]
            (root / task.data_folder).mkdir(parents=True, exist_ok=True)
            (root / task.data_folder / split).write_text("".join(rows))
        if not (root / task.template_path).exists():
            shutil.copytree(src / task.template_path, root / task.template_path)
    return root


class _NoLabels(dict):
    """A label mapping that fails on any access."""

    def _boom(self, *a, **k):
        raise AssertionError("a label was read")
    __getitem__ = __iter__ = __len__ = get = items = keys = values = __contains__ = _boom


def dies_after(f, n: int):
    """f, except that its n-th call raises KeyboardInterrupt (a kill in the middle of a search)."""
    calls = {"n": 0}

    def wrapped(codes):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return f(codes)
    return wrapped
