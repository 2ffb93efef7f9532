"""What stage 2 trains of the backbone: all its weights, or LoRA adapters (`--lora`).

With `--lora` the backbone's base weights are frozen (they stay bit-identical and are
not saved: the model folder names the backbone and holds the adapter in lora/, see
ctr.core.lora); the LoRA weights and the whole CTR module train. A model that already
has an adapter (a resumed run, or --init-from a LoRA run) keeps training it.
"""
from __future__ import annotations

from ctr.config import TrainConfig
from ctr.core.lora import add_lora, has_lora, is_lora_parameter, merge_lora
from ctr.core.model import CTRModel


def train_backbone(model: CTRModel, cfg: TrainConfig) -> None:
    """Stage 2: make the backbone trainable, whole or through LoRA."""
    if not cfg.lora:
        if has_lora(model.backbone):  # --init-from a LoRA model, trained in full from here
            merge_lora(model)
        model.backbone.requires_grad_(True)
        model.config.backbone_trained = True
        return
    if model.config.backbone_trained:
        raise ValueError("--lora on a model whose backbone was trained in full (--init-from a "
                         "stage-2 run without --lora): LoRA adapts a base backbone; start from "
                         "the stage-1 model")
    if not has_lora(model.backbone):
        model.config.lora = add_lora(model.backbone, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                     cfg.lora_target_modules or None)
    for name, p in model.backbone.named_parameters():
        p.requires_grad_(is_lora_parameter(name))
    for name, p in model.named_parameters():
        if not name.startswith("backbone."):
            p.requires_grad_(True)


def lora_summary(model: CTRModel) -> str:
    """One line for the run log: rank, targets, trainable LoRA parameters."""
    lora = model.config.lora
    if not lora:
        return ""
    n = sum(p.numel() for name, p in model.backbone.named_parameters() if is_lora_parameter(name))
    return (f"LoRA r={lora['r']} alpha={lora['alpha']} dropout={lora['dropout']} on "
            f"{', '.join(lora['target_modules'])}: {n:,} adapter parameters")
