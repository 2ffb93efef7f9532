"""`CTRConfig`: the CTR module around a backbone, saved with every checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ctr.config.fields import check_choice, from_known_keys, opt
from ctr.presets import CODEBOOK_RECIPES

QUANTIZERS = ("plain", "ema")
CODEBOOK_INITS = ("uniform", "vocab")
DECODER_INITS = ("random", "identity")
ENCODER_INITS = ("random", "spread", "grouped")
# the encoder inits that solve the encoder so that every task starts exactly on a code
CODE_PLACING_INITS = ("spread", "grouped")
PLACEMENTS = ("prefix",)
TASK_INITS = ("random", "description")


@dataclass
class CTRConfig:
    """The CTR module around a backbone (paper values are the defaults)."""

    code_length: int = opt(10, "number of code positions L (soft-prompt length)")
    codebook_size: int = opt(128, "codebook size K (values per position)")
    code_dim: int | None = opt(None, "codebook vector size; default: the backbone's hidden size")
    task_embed_dim: int | None = opt(None, "task-embedding size; default: code_dim")
    task_names: list[str] = opt([], "training task names, in task-id order")
    beta: float = opt(0.1, "commitment loss weight")
    vq_weight: float = opt(1.0, "weight of the VQ loss (codebook + commitment) in the total loss")
    task_init: Literal["random", "description"] = opt(
        "random", "task-embedding init: N(0,1) or from description vectors")
    encoder_init_std: float = opt(0.1, "std of the per-position encoder init")
    codebook_init_scale: float | None = opt(
        None, "codebook init uniform(-s, s); default 100/K as in the released code")
    codebook_init: Literal["uniform", "vocab"] = opt(
        "uniform", "uniform: uniform(-s, s) (paper); vocab: K random token embeddings of the "
                   "backbone, so a code value starts as a word-like prompt vector")
    encoder_init: Literal["random", "spread", "grouped"] = opt(
        "random", "random: N(0, encoder_init_std) (paper); spread: the encoder is solved so that "
                  "each training task starts exactly on a code, values drawn evenly from the "
                  "codebook (no collapse onto a few values, VQ loss 0 at the start); grouped: as "
                  "spread, but tasks with similar descriptions (dataset, template, task type) "
                  "start sharing values, each on a code of its own (ctr.core.code_init)")
    decoder_init: Literal["random", "identity"] = opt(
        "random", "random: nn.Linear's default (paper); identity: the decoder starts as the "
                  "identity, so the soft prompt is the codebook vectors (needs code_dim = hidden)")
    codebook_lm_grad: bool = opt(
        False, "the LM loss also trains the selected codebook vectors (forward: the codebook "
               "vector; gradient to it and, straight through, to the task encoding). Paper: only "
               "the VQ loss moves the codebook, so the prompt the LM sees learns only slowly")
    quantizer: Literal["plain", "ema"] = opt(
        "plain", "plain: learned codebook (paper); ema: EMA codebook updates")
    ema_decay: float = opt(0.8, "EMA decay (quantizer=ema)")
    kmeans_init: bool = opt(False, "initialise the codebook by k-means on the task encodings")
    dead_code_threshold: float = opt(
        0.0, "revive codes whose EMA usage falls below this (0 = off)")
    quantize_all_tasks: bool = opt(
        False, "training quantises every task's encoding at every step, not only the batch's: "
               "the VQ loss, the codebook update and dead-code revival see all tasks (the codes "
               "depend on the task only, so this is T x L vectors a step)")
    value_offsets: bool = opt(
        False, "quantizer=ema: each value also has an offset that the LM loss trains, added to its "
               "centroid in the prompt (the centroids alone, an EMA k-means of the tasks, decide "
               "the codes); a revived value's offset starts at 0")
    rotation_trick: bool = opt(
        False, "gradients reach the encodings through the rotation trick (Fifty et al. 2024, "
               "vector-quantize-pytorch) instead of straight through (paper)")
    code_entropy_weight: float = opt(
        0.0, "weight of a code-usage term: minus the entropy of the tasks' mean soft assignment "
             "to the codebook, per position (0 = off)")
    code_entropy_temperature: float = opt(
        1.0, "distance scale of the soft assignment of --code-entropy-weight")
    placement: Literal["prefix"] = opt("prefix", "where the soft prompt goes: before the input")
    use_codes: bool = opt(True, "false: no soft prompt (multi-task prompted baseline)")
    target_delimiter: str = opt(
        "\n", "text joining an input and its target for decoder-only backbones (see "
              "ctr.core.prompt_format); training, scoring, search and generation all read it from "
              "here (on the command line backslash escapes are read: '\\n', '\\t')")
    target_eos: bool = opt(True, "training targets end with EOS (seq2seq answer choices are "
                                 "scored with it, decoder-only ones without: ctr.core.prompt_format)")
    backbone: str = opt("", "backbone name or path (recorded for from_pretrained)")
    backbone_trained: bool = opt(False, "true when the backbone weights are saved with the CTR weights")
    lora: dict[str, Any] | None = opt(
        None, "LoRA settings (r, alpha, dropout, target_modules) when a PEFT LoRA adapter on the "
              "backbone is saved in the model's lora/ folder (ctr.core.lora); None: no adapter")

    def __post_init__(self) -> None:
        check_choice("quantizer", self.quantizer, QUANTIZERS)
        check_choice("placement", self.placement, PLACEMENTS)
        check_choice("task_init", self.task_init, TASK_INITS)
        check_choice("codebook_init", self.codebook_init, CODEBOOK_INITS)
        check_choice("decoder_init", self.decoder_init, DECODER_INITS)
        check_choice("encoder_init", self.encoder_init, ENCODER_INITS)
        if self.codebook_lm_grad and self.quantizer != "plain":
            raise ValueError("codebook_lm_grad needs quantizer='plain' (the EMA codebook is not "
                             "trained by gradients)")
        if self.value_offsets and self.quantizer != "ema":
            raise ValueError("value_offsets needs quantizer='ema' (the plain codebook learns its "
                             "values itself: codebook_lm_grad)")
        for name in ("code_length", "codebook_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"CTRConfig.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def recipe(cls, name: str, **options: Any) -> "CTRConfig":
        """The module of a codebook recipe (`ctr.presets.CODEBOOK_RECIPES`: paper, prompt,
        stable) with `options` on top. A recipe's LM-trained codebook is dropped when the
        options ask for the EMA quantizer, which gradients cannot train."""
        check_choice("--codebook-recipe", name, tuple(CODEBOOK_RECIPES))
        base = dict(CODEBOOK_RECIPES[name])
        if options.get("quantizer") == "ema" and "codebook_lm_grad" not in options:
            base["codebook_lm_grad"] = False
        return cls(**{**base, **options})

    def options(self) -> dict[str, Any]:
        """The options a user chooses (the fields `ctr train` takes as flags)."""
        return {k: getattr(self, k) for k in TRAIN_MODULE_OPTIONS}

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CTRConfig":
        return from_known_keys(cls, d)


# The CTRConfig fields a user chooses for a training run: `ctr train` takes each as a flag
# (on top of the codebook recipe); the other fields are filled in by the trainer.
TRAIN_MODULE_OPTIONS = ("code_length", "codebook_size", "quantizer", "kmeans_init",
                        "dead_code_threshold", "quantize_all_tasks", "value_offsets", "rotation_trick",
                        "code_entropy_weight", "code_entropy_temperature", "task_init",
                        "target_delimiter", "beta", "vq_weight", "ema_decay", "encoder_init_std",
                        "codebook_init_scale", "codebook_init", "decoder_init", "encoder_init",
                        "codebook_lm_grad")
