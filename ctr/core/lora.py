"""LoRA adapters (PEFT) on a CTR backbone: added, saved, loaded and merged.

The LoRA layers are injected into the backbone in place (`peft.get_peft_model`), so
`CTRModel.backbone` stays the plain Hugging Face model it was (every adapter method,
`body`, `get_encoder` ... work unchanged) and only its attention projections gain
`lora_A` / `lora_B` weights. The PeftModel wrapper is kept beside it, unregistered, for
PEFT's own `save_pretrained`.

On disk a LoRA model folder holds the CTR files as always, `ctr_config.json` with a
`lora` entry (rank, alpha, dropout, target modules), and the adapter in PEFT's format in
`lora/` (adapter_config.json + adapter_model.safetensors, readable by
`PeftModel.from_pretrained(base, folder / "lora")`); the base weights are not copied (they
are the backbone named in `ctr_config.json`). `merge_lora` folds the adapter into the
base weights, after which the model saves a full backbone like any stage-2 model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel

LORA_DIR = "lora"
_PEFT_ATTR = "_ctr_peft_model"  # the PeftModel around a backbone, stored unregistered
# Attention projections by the names architectures give them; the first set whose names
# are all Linear layers of the backbone is the default target (T5: q k v o; Llama,
# Mistral, Qwen, Gemma, SmolLM2: q_proj k_proj v_proj o_proj; BERT-like: query key value;
# GPT-2: c_attn; GPT-NeoX / Falcon: query_key_value).
ATTENTION_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"), ("q", "k", "v", "o"), ("query", "key", "value"),
    ("qkv_proj", "o_proj"), ("Wqkv", "out_proj"), ("query_key_value", "dense"), ("c_attn",))


def is_lora_parameter(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


def has_lora(backbone: nn.Module) -> bool:
    return getattr(backbone, _PEFT_ATTR, None) is not None


def default_target_modules(backbone: PreTrainedModel) -> list[str]:
    """The attention projections of this architecture (see ATTENTION_PROJECTIONS), else
    PEFT's own default for its model type."""
    linear = {n.rsplit(".", 1)[-1] for n, m in backbone.named_modules()
              if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"}  # GPT-2: Conv1D
    for names in ATTENTION_PROJECTIONS:
        if set(names) <= linear:
            return list(names)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults
    model_type = getattr(backbone.config, "model_type", "")
    if model_type in peft_defaults:
        return list(peft_defaults[model_type])
    raise ValueError(f"no default LoRA target modules for a {model_type!r} backbone (its Linear "
                     f"layers: {sorted(linear)[:20]}): pass --lora-target-modules NAME ...")


def add_lora(backbone: PreTrainedModel, r: int, alpha: float, dropout: float,
             target_modules: list[str] | None = None) -> dict[str, Any]:
    """Inject fresh LoRA layers into `backbone` (in place: lora_B starts at zero, so the
    function is unchanged) and freeze its base weights; returns the settings that
    `CTRConfig.lora` records."""
    from peft import LoraConfig, get_peft_model
    if has_lora(backbone):
        raise ValueError("this backbone already has LoRA layers")
    targets = list(target_modules) if target_modules else default_target_modules(backbone)
    settings = {"r": int(r), "alpha": alpha, "dropout": float(dropout), "target_modules": targets}
    config = LoraConfig(r=settings["r"], lora_alpha=alpha, lora_dropout=settings["dropout"],
                        target_modules=targets, bias="none")
    _keep(backbone, get_peft_model(backbone, config))
    return settings


def _keep(backbone: PreTrainedModel, peft_model: Any) -> None:
    if peft_model.base_model.model is not backbone:  # PEFT wraps, it does not copy
        raise RuntimeError("PEFT returned a copy of the backbone instead of adapting it in place")
    object.__setattr__(backbone, _PEFT_ATTR, peft_model)  # not a submodule: no cycle


def save_lora(backbone: PreTrainedModel, folder: str | Path) -> None:
    """The adapter in PEFT's format (adapter_config.json, adapter_model.safetensors)."""
    peft_model = getattr(backbone, _PEFT_ATTR, None)
    if peft_model is None:
        raise ValueError("the backbone has no LoRA layers to save")
    peft_model.save_pretrained(str(folder))


def load_lora(backbone: PreTrainedModel, folder: str | Path) -> None:
    """Inject the adapter saved in `folder` into `backbone` (in place); its LoRA weights
    are trainable, the base weights frozen."""
    from peft import PeftModel
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no LoRA adapter (adapter_config.json) in it")
    _keep(backbone, PeftModel.from_pretrained(backbone, str(folder), is_trainable=True))


def merge_lora(model: Any) -> None:
    """Fold the LoRA weights into the base weights of `model.backbone` (a CTRModel) and
    drop the LoRA layers: the model then saves its whole backbone, like full stage 2."""
    peft_model = getattr(model.backbone, _PEFT_ATTR, None)
    if peft_model is None:
        raise ValueError("the model has no LoRA layers to merge")
    merged = peft_model.merge_and_unload()
    if merged is not model.backbone:
        raise RuntimeError("PEFT returned a copy of the backbone when merging")
    object.__setattr__(merged, _PEFT_ATTR, None)
    if hasattr(merged, "peft_config"):
        del merged.peft_config
    model.config.lora = None
    model.config.backbone_trained = True
