"""Training checkpoints: model + optimizer + scheduler + step, written atomically, no pickle."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .fileio import atomic_dir, read_json, write_json

STATE_FILE = "trainer_state.json"
OPTIM_TENSORS = "optimizer.safetensors"
MODEL_DIR = "model"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into flat tensors and JSON (safetensors has no nesting)."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, extra: dict[str, Any]) -> None:
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp / MODEL_DIR)
        tensors, meta = optimizer_to_files(optimizer.state_dict())
        save_file(tensors, str(tmp / OPTIM_TENSORS))
        write_json(tmp / STATE_FILE, {"step": step, "optimizer": meta,
                                      "scheduler": scheduler.state_dict(), **extra})


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        m = _CKPT.match(p.name)
        if m and (p / STATE_FILE).exists():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def load_training_state(path: Path, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer and scheduler in place (the model is rebuilt from `path/model`
    with CTRModel.from_pretrained); returns the trainer state."""
    state = read_json(path / STATE_FILE)
    optimizer.load_state_dict(optimizer_from_files(load_file(str(path / OPTIM_TENSORS)),
                                                   state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    return state


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
                   if (m := _CKPT.match(p.name)))
    for _, p in found[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
