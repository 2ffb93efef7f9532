"""`ctr export`: one code of a checkpoint as a PEFT prompt-tuning adapter or a bare tensor.

A code is L integers; the checkpoint's codebook and decoder turn it into L soft-prompt
vectors [L, hidden] (`CTRModel.soft_prompt`). Those vectors are exactly a PEFT
`PROMPT_TUNING` adapter with L virtual tokens, so `--format peft` writes one that
`PeftModel.from_pretrained(base, DIR)` loads: adapter_config.json (task type CAUSAL_LM or
SEQ_2_SEQ_LM, num_transformer_submodules = 1 so that a T5 prompt goes to the encoder only,
the base model) and adapter_model.safetensors (`prompt_embeddings` [L, hidden]). The base is
the backbone the code was trained with: the original one for stage 1 (the embedded SmolLM2
resolves to its converted local copy, whose weights are the de-quantized GGUF, not the
hub's), the checkpoint's fine-tuned backbone/ folder for stage 2. A stage-2 model trained
with `--lora` keeps the original base: its LoRA adapter is copied into the export's lora/
(PEFT's format), to be merged into the base before the prompt is applied (the card shows how).
`--format tensor` writes the [L, hidden] prompt alone, for engines that take prompt embeddings.

How CTR and PEFT prompt tuning compare (tests/interop/test_export.py checks each point):
- Same place: both put the L vectors in front of the input tokens (T5: of the encoder
  input). For a batch of 1 and for right-padded batches the logits agree to 1e-5.
- Left-padded decoder-only batches differ: CTR moves each row's prompt next to its first
  real token ([pad, prompt, text], positions from 0 at the prompt), PEFT puts it in front of
  the padded row ([prompt, pad, text]) and drops `position_ids`, so in padded rows the text
  sits `pads` positions further from the prompt than in training and logits drift a little
  (rows without padding are exact). Generate padded batches with ctr, or one row at a time.
- Cached generation: transformers 5.x passes the KV cache to `prepare_inputs_for_generation`
  as `cache`; PEFT 0.21's prompt-learning code looks for `past_key_values`, does not find
  it, and inserts the L virtual tokens again at every decoding step. Greedy `generate()` of
  a CAUSAL_LM adapter is then wrong; with `use_cache=False` it equals CTR's tokens (slower:
  every step re-reads the sequence). Seq2seq adapters are not affected.
- Batching: PEFT runs one prompt-learning adapter per forward pass; CTR gives every row its
  own code, so one batch can mix tasks (`ctr generate`, the scorer, lm-eval's `ctr` model).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ctr.config import CTRConfig
from ctr.core.backbone import resolve_model_path
from ctr.core.codes import code_for_task, parse_code, read_checked_codes, validate_code
from ctr.core.loading import load_code_table, require_model_dir
from ctr.core.lora import LORA_DIR
from ctr.core.model import BACKBONE_DIR, CONFIG_FILE, CTRModel, read_config
from ctr.core.prompt_format import PromptEncoder
from ctr.fileio import atomic_dir, write_json
from ctr.interop.export_config import ExportConfig, ExportFormat
from ctr.interop.families import family_of

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TENSOR_FILE = "soft_prompt.safetensors"
PROMPT_KEY = "prompt_embeddings"  # PEFT's key for a prompt-tuning adapter; the tensor file's too
EXPORT_INFO = "ctr_export.json"
CARD = "README.md"
CODE_FLAGS = "--task NAME (a training task), --code 3,17,... or --codes-file F --for-task T"


@dataclass
class ChosenCode:
    code: list[int]
    source: str  # where the code came from, in words
    task: str | None = None


def choose_code(cfg: ExportConfig, config: CTRConfig, folder: Path) -> ChosenCode:
    """The code asked for by exactly one of --task, --code or --codes-file (+ --for-task),
    checked against the checkpoint's code length and codebook size."""
    L, K = config.code_length, config.codebook_size
    given = [f for f, v in (("--task", cfg.task), ("--code", cfg.code), ("--codes-file", cfg.codes_file))
             if v]
    if cfg.for_task and not cfg.codes_file:
        raise ValueError("--for-task names a task of a codes file: add --codes-file F (or use "
                         "--task NAME for a training task of the checkpoint)")
    if len(given) != 1:
        raise ValueError(f"pass exactly one of {CODE_FLAGS}" + (f" (got {' and '.join(given)})"
                                                                if given else ""))
    if cfg.code:
        return ChosenCode(validate_code(parse_code(cfg.code), L, K, f"--code {cfg.code}"), "--code")
    if cfg.task:
        table = load_code_table(folder, "CHECKPOINT")[0]
        where = (f"the code table of {folder} (for a code of ctr zero-label / few-shot use "
                 "--codes-file F --for-task T)")
        code = validate_code(code_for_task(table, cfg.task, where), L, K, f"--task {cfg.task}")
        return ChosenCode(code, f"training task {cfg.task} of the code table", cfg.task)
    codes = read_checked_codes(cfg.codes_file, L, K)
    task = cfg.for_task
    if task is None:
        if len(codes) != 1:
            raise ValueError(f"--codes-file {cfg.codes_file} holds {len(codes)} tasks "
                             f"(e.g. {sorted(codes)[:5]}): name one with --for-task T")
        task = next(iter(codes))
    code = code_for_task(codes, task, f"--codes-file {cfg.codes_file}")
    return ChosenCode(code, f"task {task} of {cfg.codes_file}", task)


def base_model_reference(folder: Path, config: CTRConfig) -> str:
    """What the adapter's base_model_name_or_path says: the checkpoint's saved backbone
    (stage 2), else the backbone it was trained on, as an absolute path when it is local."""
    if config.backbone_trained:
        return str((folder / BACKBONE_DIR).resolve())
    if not config.backbone:
        raise ValueError(f"{folder / CONFIG_FILE}: no backbone recorded, so the adapter could not "
                         "name its base model")
    resolved = resolve_model_path(config.backbone)  # 'smollm2' -> its converted local copy
    local = Path(resolved).expanduser()
    return str(local.resolve()) if local.exists() else resolved


@torch.no_grad()
def soft_prompt_of(model: CTRModel, code: list[int]) -> torch.Tensor:
    """The [L, hidden] soft prompt of one code, in float32 on the CPU."""
    model.eval()
    prompt, _, _ = model.soft_prompt(1, codes=torch.tensor([code]))
    return prompt[0].detach().float().cpu().contiguous()


def peft_config_for(model: CTRModel, base: str):
    """A PEFT PromptTuningConfig equivalent to this model's soft prompt."""
    from peft import PromptTuningConfig

    return PromptTuningConfig(
        task_type=family_of(model.adapter).peft_task_type,
        num_virtual_tokens=model.config.code_length,
        token_dim=model.backbone.get_input_embeddings().embedding_dim,
        num_transformer_submodules=1,  # T5: the prompt goes to the encoder only, as in CTR
        base_model_name_or_path=base, inference_mode=True)


def _check_output(cfg: ExportConfig) -> Path:
    if not cfg.output:
        raise ValueError("--output is required: the folder to write, e.g. --output adapter/")
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out}: a file is in the way; --output names a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ValueError(f"--output {out} exists and is not empty: pass --overwrite to replace it, "
                         "or choose another folder")
    return out


def export_info(model: CTRModel, chosen: ChosenCode, folder: Path, base: str,
                fmt: ExportFormat, dtype: str) -> dict:
    """ctr_export.json: where the prompt came from and how inputs must be written for it."""
    enc = PromptEncoder.for_model(model)
    family = family_of(model.adapter)
    probe = enc.sources(["x"])[0]
    ends_with_eos = bool(probe) and probe[-1] == enc.eos
    prefix = f" with {enc.target_prefix!r} in front" if enc.target_prefix else " directly"
    lora_adapter = LORA_DIR if model.config.lora else None
    return {
        "format": fmt.value, "checkpoint": str(folder.resolve()), "code": chosen.code,
        "code_source": chosen.source, "task": chosen.task, "base_model_name_or_path": base,
        "seq2seq": model.adapter.seq2seq, "peft_task_type": family.peft_task_type,
        "auto_class": family.auto_class, "num_virtual_tokens": model.config.code_length,
        "dtype": dtype, "lora_adapter": lora_adapter,
        "prompt_format": {"target_delimiter": model.config.target_delimiter,
                          "target_eos": model.config.target_eos,
                          "input_suffix": enc.source_suffix, "target_prefix": enc.target_prefix,
                          "input_ends_with_eos": ends_with_eos,
                          "add_special_tokens": False,
                          "in_words": family.inputs.format(suffix=enc.source_suffix, prefix=prefix)},
        # an input as training wrote it (delimiter, EOS), as text the tokenizer reads back
        "example_input": model.tokenizer.decode(enc.sources(["<your input>"])[0]),
        "peft_generate_args": family.peft_generate_args, "peft_notes": family.peft_notes,
    }


def run_export(cfg: ExportConfig) -> Path:
    """Write the export `cfg` asks for; returns the output folder."""
    fmt = ExportFormat(cfg.format)
    if not cfg.checkpoint:
        raise ValueError("name the checkpoint: ctr export CHECKPOINT ... (a run folder, final/ or "
                         "a model folder)")
    folder = require_model_dir(cfg.checkpoint, "CHECKPOINT")
    config = read_config(folder)
    if not config.use_codes:
        where = (f"its LoRA adapter in {folder / LORA_DIR} loads with PeftModel.from_pretrained(base, ...)"
                 if config.lora else f"its backbone in {folder / BACKBONE_DIR} loads with from_pretrained")
        raise ValueError(f"CHECKPOINT {cfg.checkpoint} was trained without codes (use_codes=false): "
                         f"there is no code to export; {where} as it is")
    chosen = choose_code(cfg, config, folder)  # cheap checks before loading the backbone
    out = _check_output(cfg)
    base = base_model_reference(folder, config)
    model = CTRModel.from_pretrained(folder)
    dtype = getattr(torch, cfg.dtype)
    prompt = soft_prompt_of(model, chosen.code).to(dtype)
    info = export_info(model, chosen, folder, base, fmt, cfg.dtype)
    with atomic_dir(out) as tmp:
        if config.lora:  # the code was trained on the LoRA-adapted backbone: it goes with it
            shutil.copytree(folder / LORA_DIR, tmp / LORA_DIR)
        if fmt is ExportFormat.PEFT:
            peft_config_for(model, base).save_pretrained(str(tmp))
            save_file({PROMPT_KEY: prompt}, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        else:
            meta = {"code": ",".join(map(str, chosen.code)), "base_model_name_or_path": base,
                    "auto_class": info["auto_class"]}
            save_file({PROMPT_KEY: prompt}, str(tmp / TENSOR_FILE), metadata=meta)
        write_json(tmp / EXPORT_INFO, info)
        (tmp / CARD).write_text(export_card(info, out.resolve()))
    what = "PEFT prompt-tuning adapter" if fmt is ExportFormat.PEFT else "soft prompt tensor"
    print(f"{what}: code {chosen.code} ({chosen.source}), {prompt.shape[0]} x {prompt.shape[1]} "
          f"{cfg.dtype}\n  base model: {base}\n  written to {out}")
    return out


def export_card(info: dict, out: Path) -> str:
    """README.md of an export: what it is, how to load it, how inputs must look."""
    base, fmt, auto = info["base_model_name_or_path"], info["format"], info["auto_class"]
    what = "PEFT prompt-tuning adapter" if fmt == ExportFormat.PEFT.value else "soft prompt"
    lines = [f"# CTR code {info['code']} as a {what}", "",
             f"- code: `{info['code']}` ({info['code_source']}) of `{info['checkpoint']}`",
             f"- {info['num_virtual_tokens']} virtual tokens, {info['dtype']}",
             f"- base model: `{base}`", "",
             "## Inputs as the code was trained on them", "", info["prompt_format"]["in_words"],
             "", "## Load it", "", "```python", "import torch",
             f"from transformers import {auto}, AutoTokenizer"]
    merge = (["# the LoRA adapter the code was trained with, merged into the base first",
              f"base = PeftModel.from_pretrained(base, {str(Path(out) / info['lora_adapter'])!r}).merge_and_unload()"]
             if info.get("lora_adapter") else [])
    if fmt == ExportFormat.PEFT.value:
        lines += ["from peft import PeftModel", "",
                  f"base = {auto}.from_pretrained({base!r})", *merge,
                  f"model = PeftModel.from_pretrained(base, {str(out)!r})",
                  f"tok = AutoTokenizer.from_pretrained({base!r})",
                  f"ids = tok([{info['example_input']!r}], add_special_tokens=False, return_tensors=\"pt\")",
                  f"out = model.generate(**ids, max_new_tokens=32{info['peft_generate_args']})",
                  "```", "", info["peft_notes"], ""]
    else:
        lines += ["from safetensors.torch import load_file", *(["from peft import PeftModel"] if merge else []), "",
                  f"prompt = load_file({str(Path(out) / TENSOR_FILE)!r})[{PROMPT_KEY!r}]  # [L, hidden]",
                  f"base = {auto}.from_pretrained({base!r})", *merge,
                  "embeds = base.get_input_embeddings()(input_ids)  # [1, T, hidden]",
                  "embeds = torch.cat([prompt[None].to(embeds.dtype), embeds], 1)  # the prompt first",
                  "mask = torch.ones(embeds.shape[:2], dtype=torch.long)",
                  "out = base.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=32)",
                  "```", ""]
    lines += ["PEFT applies one prompt-learning adapter per batch; ctr batches rows with different "
              "codes (tasks) together: `ctr generate`, `ctr eval`, lm-eval's `ctr` model.", ""]
    return "\n".join(lines)
