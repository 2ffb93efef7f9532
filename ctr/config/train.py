"""`TrainConfig`: one training run (`ctr train`), holding the CTRConfig of the module it
builds; `resolved()` fills in what the preset and the codebook recipe decide."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from ctr.config.fields import check_choice, from_known_keys, opt, parse_delimiter
from ctr.config.mixture import MixtureOptions
from ctr.config.model import CODE_PLACING_INITS, TRAIN_MODULE_OPTIONS, CTRConfig
from ctr.modes import TrainMode
from ctr.presets import CODEBOOK_RECIPES, PRESET_RECIPES, PRESETS

TRAIN_CONFIG_FILE = "train_config.json"  # a training run's TrainConfig, as given
RESOLVED_CONFIG_FILE = "resolved_config.json"  # beside it: what the run used (`TrainConfig.resolved`)


def read_run_config(folder: str | os.PathLike) -> dict[str, Any]:
    """What a training run in `folder` used, as a dict: its resolved_config.json, else (runs
    that wrote only one file) its train_config.json; {} when it has neither."""
    for name in (RESOLVED_CONFIG_FILE, TRAIN_CONFIG_FILE):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return {}


@dataclass(kw_only=True)
class TrainConfig(MixtureOptions):
    """One training run (`ctr train`); its mixture options are those of `MixtureOptions`."""

    output_dir: str = opt("runs/ctr", "folder for checkpoints, metrics.jsonl and the final model")
    model: str = opt("smollm2", "backbone: 'smollm2' (embedded default), a local HF folder or a hub id")
    mode: Literal["codebook", "finetune", "joint", "baseline"] | None = opt(
        None, "what the run trains: codebook (stage 1, the LM frozen), finetune (stage 2: "
              "everything, from the stage-1 model of --init-from), joint (fresh codes and the LM "
              "together), baseline (the LM without codes); default from --stage, --no-codes and "
              "--joint, which name the same modes")
    stage: int = opt(1, "1: backbone frozen; 2: everything trainable (needs --init-from); "
                        "the same as --mode codebook / finetune")
    init_from: str | None = opt(None, "CTR checkpoint to start from (stage 2: the stage-1 result)")
    preset: str = opt("cpu-small", "hyper-parameter preset: paper, cpu-small, cpu-demo, tiny")
    steps: int | None = opt(None, "optimizer steps")
    batch_size: int | None = opt(None, "global batch (examples per optimizer step)")
    micro_batch_size: int | None = opt(None, "examples per forward pass per process")
    group_by_length: bool = opt(
        True, "forward passes take rows of similar length from each global batch (less padding; "
              "the loss is the global batch's token mean either way)")
    micro_batch_tokens: int | None = opt(
        None, "also cap each forward pass at this many padded token positions (a row longer "
              "than the cap goes alone); --micro-batch-size still caps the rows")
    gradient_checkpointing: bool = opt(
        False, "stage 2: recompute the backbone's activations in the backward pass instead of "
               "keeping them (less memory for large backbones, about 1/3 more compute)")
    compile: bool = opt(False, "torch.compile the backbone (inductor, dynamic shapes): the first "
                               "passes of each new shape compile; weights and saves are unchanged")
    fused_adamw: Literal["auto", "yes", "no"] = opt(
        "auto", "AdamW's fused kernel (one kernel for all parameters): auto = on GPU")
    # the training step's layout and host work (ctr.core.packing, ctr.train.step_batches)
    packing: Literal["auto", "yes", "no"] = opt("auto", "the rows of a pass in one sequence, no padding (auto: where exact)")
    pack_multiple: int = opt(64, "a packed sequence is end-padded to a multiple of this many positions")
    prefetch: int = opt(2, "steps whose batches a thread samples and collates ahead (0: in the loop)")
    lr: float | None = opt(None, "peak learning rate")
    warmup_steps: int | None = opt(None, "linear warmup steps")
    projection_lr_scale: float | None = opt(
        None, "lr multiplier for the encoder and decoder matrices (Adam moves a wide linear "
             "map's output by ~lr x fan-in per step; < 1 keeps codes stable)")
    encoder_lr_scale: float | None = opt(
        None, "lr multiplier for the encoder alone (default: 0.002 in stage 1 with --encoder-init "
              "spread or grouped, which keeps the encoder's map steady while the values learn; the "
              "task embeddings train at --task-embedding-lr-scale; else "
              "--projection-lr-scale)")
    task_embedding_lr_scale: float | None = opt(
        None, "lr multiplier for the task embeddings, the encoder's input (< 1 holds each task "
              "near the code it starts on: with --encoder-init grouped, on the values its "
              "description shared with tasks like it; default: 0.1 in stage 1 with "
              "--encoder-init grouped, else 1)")
    min_lr_ratio: float = opt(0.1, "cosine decay ends at this fraction of the peak lr")
    weight_decay: float = opt(0.1, "AdamW weight decay")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "gradient norm clip")
    target_only_logits: bool = opt(True, "apply the LM head to target positions only")
    log_every: int = opt(1, "steps between metrics.jsonl records")
    save_every: int = opt(50, "steps between checkpoints")
    keep_checkpoints: int = opt(2, "how many step checkpoints to keep")
    seed: int = opt(0, "random seed (data order, init, dropout)")
    resume: bool = opt(False, "continue from the latest checkpoint in output_dir")
    mixed_precision: Literal["auto", "no", "bf16"] = opt("auto", "auto: bf16 on GPU, fp32 on CPU")
    codebook_recipe: Literal["paper", "prompt", "stable", "grouped"] | None = opt(
        None, "how the codebook is built and learns (each CTR module flag below overrides its "
              "part; in Python, TrainConfig.ctr replaces the recipe): paper = the authors' "
              "module; prompt = code values start as token embeddings and are the prompt, "
              "trained by the LM loss; stable = "
              "prompt's start, every task quantised each step, EMA codebook, revival from every "
              "task; grouped = stable, with tasks starting on codes grouped by their "
              "descriptions and held near them (default of the presets meant for long runs; "
              "see docs)")
    ctr: CTRConfig | None = opt(
        None, "the CTR module the run builds (ctr.config.CTRConfig; task names, backbone and "
              "codes on/off are filled in by the trainer); None: --codebook-recipe's module. "
              "On the command line its options are flags of their own (--code-length, "
              "--quantizer, ...) applied on top of the recipe. Stage 2 from --init-from "
              "continues that model's module")
    codebook_warmup_steps: int = opt(
        0, "stage 1: the first N steps train continuous task prompts (the encodings, decoded, "
           "no codebook); then the codebook is set by k-means on every task's encoding and "
           "quantisation starts; 0 = quantise from the first step")
    no_codes: bool = opt(False, "train the backbone without codes (multi-task prompted baseline)")
    joint: bool = opt(False, "stage 2 without --init-from: a fresh CTR module around --model, "
                             "codes and backbone trained together from the first step (a backbone "
                             "trained from scratch has nothing for a frozen stage 1 to build on)")
    data_cache: str | None = opt(
        None, "folder of the training data cache: the data as a memory-mapped Arrow table and its "
              "token ids, built once per data/tokenizer/lengths (ctr.train.dataset_cache); "
              "default: $CTR_DATA_CACHE or ~/.cache/ctr/data")
    no_data_cache: bool = opt(False, "read and tokenise the data in memory, without the Arrow cache "
                                     "(JSON lines and the T0 folder only)")
    data_workers: int = opt(1, "processes reading and tokenising the data when the cache is built")
    lora: bool = opt(False, "stage 2: train LoRA adapters (PEFT) and the CTR module; the backbone's "
                            "base weights stay as they are. The adapter is saved in PEFT's format "
                            "in the model folder's lora/ (ctr.core.lora)")
    lora_r: int = opt(16, "LoRA rank (--lora)")
    lora_alpha: int = opt(32, "LoRA alpha: the update is scaled by alpha / r (--lora)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA input (--lora)")
    lora_target_modules: list[str] = opt(
        [], "module names LoRA adapts (--lora); default: the attention projections of the "
            "architecture (T5: q k v o; Llama-like: q_proj k_proj v_proj o_proj)")
    max_minutes: float | None = opt(
        None, "time budget: the first steps are timed and the step count (capped by --steps, "
              "warmup scaled with it) is set so that training and the final save end within M "
              "minutes; the decision is saved in the checkpoints and kept on --resume "
              "(ctr.train.time_budget)")

    # the CTR module options given as flags on top of a recipe or a `ctr` (not a field: what
    # stage 2 compares with --init-from's module); None: none given that way
    given_module_options: ClassVar[frozenset[str] | None] = None

    def __post_init__(self) -> None:
        """Checks what was given; fills nothing in (see `resolved`)."""
        if isinstance(self.ctr, dict):  # read back from train_config.json
            self.ctr = CTRConfig.from_dict(self.ctr)
        self._resolve_mode()
        if self.gradient_checkpointing and self.stage == 1:
            raise ValueError("--gradient-checkpointing saves memory in stage 2; stage 1 keeps the "
                             "frozen LM in eval mode, where checkpointing does nothing")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ValueError(f"--micro-batch-tokens must be >= 1, got {self.micro_batch_tokens}")
        if self.data_workers < 1:
            raise ValueError(f"--data-workers must be >= 1, got {self.data_workers}")
        if self.no_data_cache and any(p.endswith(".parquet") or os.path.isdir(p) for p in self.train_files):
            raise ValueError("--no-data-cache reads JSON lines only: Parquet files and saved "
                             "datasets are read through the data cache")
        if self.lora and self.stage != 2:
            raise ValueError("--lora trains adapters on the backbone: use it with --stage 2 "
                             "(--mode finetune / joint / baseline); stage 1 keeps it frozen")
        if self.lora_r < 1:
            raise ValueError(f"--lora-r must be >= 1, got {self.lora_r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"--max-minutes must be > 0, got {self.max_minutes}")
        if self.task_embedding_lr_scale is not None and not self.task_embedding_lr_scale >= 0:
            raise ValueError(f"--task-embedding-lr-scale must be >= 0, got {self.task_embedding_lr_scale}")
        if self.mode is TrainMode.JOINT and self.init_from:
            raise ValueError("--mode joint (--joint) trains fresh codes and the backbone together: "
                             "drop --init-from (or use --mode finetune to continue a stage-1 model)")
        check_choice("--preset", self.preset, tuple(PRESETS))
        self.check_mixture()
        if self.codebook_recipe is not None:
            check_choice("--codebook-recipe", self.codebook_recipe, tuple(CODEBOOK_RECIPES))
        module = self.module()
        if self.micro_batch_tokens and module.dead_code_threshold > 0 and not module.quantize_all_tasks:
            raise ValueError("--micro-batch-tokens with --dead-code-threshold: code usage decays once "
                             "per forward pass, and a token budget makes the pass count depend on the "
                             "lengths and the number of processes; cap passes by --micro-batch-size "
                             "(or quantise every task: --quantize-all-tasks counts once per step)")
        if self.batch_size and self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"--batch-size {self.batch_size} must be a multiple of "
                             f"--micro-batch-size {self.micro_batch_size}")

    @classmethod
    def from_flags(cls, **options: Any) -> "TrainConfig":
        """The config `ctr train` builds from its flags: TrainConfig's own options, and the CTR
        module's (`TRAIN_MODULE_OPTIONS`; None: not given) on top of the codebook recipe
        (--codebook-recipe, else the preset's) as `ctr`, which stays None when none is given.
        `TrainConfig.from_flags(preset="tiny", code_length=4)` is `ctr train --preset tiny
        --code-length 4`."""
        module = {k: options.pop(k) for k in TRAIN_MODULE_OPTIONS if k in options}
        cfg = cls(**options)
        cfg._take_module_options(module)
        return cfg

    def _take_module_options(self, module: dict[str, Any]) -> None:
        """While the config is built: the CTR module's options given as flags (None: not
        given) on top of `ctr` when one is given, else of the codebook recipe. Which options
        were given is kept (not a field) for stage 2, which checks only those."""
        module = {k: v for k, v in module.items() if v is not None}
        if not module:
            return
        if "target_delimiter" in module:  # as typed on a command line: escapes are read
            module["target_delimiter"] = parse_delimiter(module["target_delimiter"])
        if self.ctr is not None:
            self.ctr = dataclasses.replace(self.ctr, **module)
        else:
            self.codebook_recipe = self.codebook_recipe or PRESET_RECIPES[self.preset]
            self.ctr = CTRConfig.recipe(self.codebook_recipe, **module)
        self.given_module_options = frozenset(module)
        self.__post_init__()  # the checks that read the module

    def module(self) -> CTRConfig:
        """The CTR module's options: `ctr`, else --codebook-recipe's (default: the preset's)."""
        return self.ctr or CTRConfig.recipe(self.codebook_recipe or PRESET_RECIPES[self.preset])

    def resolved(self) -> "TrainConfig":
        """A copy with every option the preset and the codebook recipe decide filled in: the
        hyper-parameters left at None, the module (`ctr`), the recipe's name and the encoder's
        lr scale. This config is not changed; a run records the copy as resolved_config.json."""
        filled = {k: v for k, v in PRESETS[self.preset][self.stage].items() if getattr(self, k) is None}
        module = self.module()
        encoder_lr_scale = self.encoder_lr_scale
        if encoder_lr_scale is None and module.encoder_init in CODE_PLACING_INITS and self.stage == 1:
            encoder_lr_scale = SPREAD_ENCODER_LR_SCALE
        task_embedding_lr_scale = self.task_embedding_lr_scale
        if task_embedding_lr_scale is None:
            task_embedding_lr_scale = GROUPED_TASK_EMBEDDING_LR_SCALE \
                if module.encoder_init == "grouped" and self.stage == 1 else 1.0
        recipe = self.codebook_recipe or (None if self.ctr else PRESET_RECIPES[self.preset])
        module = dataclasses.replace(module, use_codes=self.mode.uses_codes)  # a copy, as recorded
        return dataclasses.replace(self, **filled, ctr=module, codebook_recipe=recipe,
                                   encoder_lr_scale=encoder_lr_scale,
                                   task_embedding_lr_scale=task_embedding_lr_scale)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A TrainConfig from its JSON form (train_config.json, resolved_config.json)."""
        return from_known_keys(cls, d)

    def _resolve_mode(self) -> None:
        """`mode` from --mode or from the older flags, which are then set to match it."""
        named = TrainMode.from_flags(self.stage, self.no_codes, self.joint)
        if self.mode is None:
            self.mode = named
            return
        check_choice("--mode", self.mode, tuple(m.value for m in TrainMode))
        mode = TrainMode(self.mode)
        # the older flags at their defaults name CODEBOOK; any other value must agree
        if named is not TrainMode.CODEBOOK and named is not mode:
            raise ValueError(f"--mode {mode.value} contradicts --stage {self.stage}"
                             f"{' --no-codes' if self.no_codes else ''}{' --joint' if self.joint else ''} "
                             f"(which name --mode {named.value}): pass --mode alone")
        self.mode = mode
        self.stage, self.no_codes, self.joint = mode.stage, mode is TrainMode.BASELINE, mode is TrainMode.JOINT


# With --encoder-init spread or grouped the encoder trains at 0.002 x lr in stage 1, so that its
# map stays steady while the code values learn (results/stage1_diagnosis/cpu/); a task still
# moves between codes as its embedding learns (--task-embedding-lr-scale holds it).
SPREAD_ENCODER_LR_SCALE = 0.002
# With --encoder-init grouped the task embeddings train at 0.1 x lr in stage 1: at the full lr
# they carry the tasks off the codes their descriptions grouped (type gap 0.20 -> 0.08-0.11 in
# 300 steps); at 0.1 the codes keep it and still move (results/codebook_proxy/).
GROUPED_TASK_EMBEDDING_LR_SCALE = 0.1


def _module_options_as_keywords(init: Callable[..., None]) -> Callable[..., None]:
    """`TrainConfig(code_length=4, ...)`, the CTR module's options as keywords of TrainConfig
    itself, which they were before `TrainConfig.ctr` held them: kept as an alias that works
    as `from_flags` does and says what replaced it."""
    @functools.wraps(init)
    def __init__(self, *args: Any, **kw: Any) -> None:
        module = {k: kw.pop(k) for k in TRAIN_MODULE_OPTIONS if k in kw}
        init(self, *args, **kw)
        if module:
            warnings.warn(f"TrainConfig({'=..., '.join(module)}=...): the CTR module's options are "
                          "TrainConfig.ctr now; pass the same keywords to TrainConfig.from_flags, or "
                          "ctr=CTRConfig.recipe(RECIPE, ...)", FutureWarning, stacklevel=2)
            self._take_module_options(module)
    return __init__


TrainConfig.__init__ = _module_options_as_keywords(TrainConfig.__init__)
