"""Training checkpoints: model + optimizer + scheduler + step, written atomically, no pickle;
what a resumed run must share with its checkpoint (`check_resume`)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ctr.config import TRAIN_MODULE_OPTIONS, TrainConfig
from ctr.fileio import atomic_dir, read_json, write_json

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


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint (None when it is): the trainer state must be
    valid JSON with a step, and the model config, model weights and optimizer tensors must
    be there with readable safetensors headers (which also catches a cut-off file)."""
    from ctr.core.model import BACKBONE_DIR, CONFIG_FILE, WEIGHTS_FILE
    path = Path(path)
    try:
        state = read_json(path / STATE_FILE)
    except FileNotFoundError:
        return f"no {STATE_FILE}"
    except (ValueError, OSError) as e:
        return str(e)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{STATE_FILE} has no step"
    try:
        model_cfg = read_json(path / MODEL_DIR / CONFIG_FILE)
    except (ValueError, OSError) as e:
        return f"{MODEL_DIR}/{CONFIG_FILE}: {e}"
    needed = [path / OPTIM_TENSORS, path / MODEL_DIR / WEIGHTS_FILE]
    for f in needed:
        if not f.is_file():
            return f"no {f.relative_to(path)}"
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            return f"{f.relative_to(path)}: unreadable ({e})"
    if isinstance(model_cfg, dict) and model_cfg.get("backbone_trained") \
            and not (path / MODEL_DIR / BACKBONE_DIR / "config.json").is_file():
        return f"no {MODEL_DIR}/{BACKBONE_DIR}/config.json (the trained backbone)"
    if isinstance(model_cfg, dict) and model_cfg.get("lora") \
            and not (path / MODEL_DIR / "lora" / "adapter_model.safetensors").is_file():
        return f"no {MODEL_DIR}/lora/adapter_model.safetensors (the LoRA adapter)"
    return None


def step_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """The step checkpoint folders in `output_dir` (checkpoint-NNNNNNN), oldest first."""
    return sorted((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
                  if (m := _CKPT.match(p.name)) and p.is_dir())


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint. Checkpoints are written with `atomic_dir`, so an
    incomplete one comes only from outside damage (an older writer, power loss, a disk
    error); it is skipped with a message naming it and the reason, and the newest
    complete one before it is returned."""
    for _, p in reversed(step_checkpoints(output_dir)):
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        print(f"[ctr] {p}: incomplete checkpoint ({problem}); falling back to an older one", flush=True)
    return None


def check_fresh_start(output_dir: Path) -> None:
    """A run started without --resume must not write over an earlier run's checkpoints or
    final model in the same folder (its metrics.jsonl would be truncated, its checkpoints
    pruned, its final/ replaced)."""
    earlier = [p.name for _, p in step_checkpoints(output_dir)]
    earlier += ["final"] if (Path(output_dir) / "final").is_dir() else []
    if earlier:
        raise ValueError(f"--output-dir {output_dir} holds an earlier run ({', '.join(earlier[-2:])}): "
                         "pass --resume to continue it, or give another --output-dir (or delete "
                         "the folder) to start over")


def load_training_state(path: Path, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer and scheduler in place (the model is rebuilt from `path/model`
    with CTRModel.from_pretrained); returns the trainer state."""
    state = read_json(path / STATE_FILE)
    saved = optimizer_from_files(load_file(str(path / OPTIM_TENSORS)), state["optimizer"])
    if [len(g["params"]) for g in saved["param_groups"]] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"--resume from {path}: its optimizer has other parameter groups than this "
                         "version builds (a checkpoint of an older ctr?): resume it with that "
                         "version, or use another --output-dir to start a new run")
    optimizer.load_state_dict(saved)
    scheduler.load_state_dict(state["scheduler"])
    return state


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
                   if (m := _CKPT.match(p.name)))
    for _, p in found[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


# Settings a resumed run must share with its checkpoint (the rest, e.g. --micro-batch-size,
# --save-every or --mixed-precision, may change between the two), besides every option of
# the CTR module (`CTRConfig.options`).
RESUME_KEYS = ("stage", "steps", "batch_size", "lr", "warmup_steps", "projection_lr_scale",
               "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip", "seed", "mixing",
               "task_cap", "encoder_lr_scale", "task_embedding_lr_scale", "max_source_len",
               "max_target_len", "limit_examples", "no_codes", "joint", "codebook_warmup_steps",
               "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


def check_resume(checkpoint: Path, cfg: TrainConfig, task_names: list[str]) -> None:
    """Refuse to resume a checkpoint whose tasks or key settings differ from this run's
    (task ids would shift, or the schedule and batches would silently change). `cfg`: the
    run's resolved config, as the checkpoint recorded its own."""
    from ctr.core.model import CONFIG_FILE
    state = read_json(checkpoint / STATE_FILE)
    saved = state.get("config") or {}
    saved_module = saved.get("ctr")
    if saved_module is None:  # a checkpoint whose config had the module's options at the top
        saved_module = {k: saved[k] for k in TRAIN_MODULE_OPTIONS if k in saved}
        budget = state.get("time_budget")  # and the steps --max-minutes decided in place of the asked
        if budget:
            saved = dict(saved, steps=budget["requested_steps"],
                         warmup_steps=budget["requested_warmup_steps"])
    compared = [(k, saved[k], getattr(cfg, k)) for k in RESUME_KEYS if k in saved]
    compared += [(k, saved_module[k], v) for k, v in cfg.module().options().items() if k in saved_module]
    problems = [f"--{k.replace('_', '-')} {now!r} (checkpoint: {old!r})"
                for k, old, now in compared if old != now]
    old_names = read_json(checkpoint / "model" / CONFIG_FILE).get("task_names", [])
    if old_names != task_names:
        i = next((i for i, (a, b) in enumerate(zip(old_names, task_names)) if a != b),
                 min(len(old_names), len(task_names)))
        at = lambda names: repr(names[i]) if i < len(names) else "nothing"
        problems.append(f"the task list: {len(task_names)} tasks (checkpoint: {len(old_names)}), "
                        f"first difference at task id {i}: {at(task_names)} "
                        f"(checkpoint: {at(old_names)})")
    if problems:
        raise ValueError(f"--resume from {checkpoint}: this run differs from the checkpoint in "
                         + "; ".join(problems) + ". Pass the checkpoint's settings and data to "
                         "continue it, or use another --output-dir to start a new run")
