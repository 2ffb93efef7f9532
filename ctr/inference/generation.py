"""Generation under a task code (`ctr generate`), for seq2seq and decoder-only backbones.

The code becomes the same soft prompt training used (`CTRModel.embed_inputs`) and goes
into Hugging Face `generate` as `inputs_embeds`. Every row may carry its own code, so one
batch can mix tasks. Decoder-only rows are left-padded (new tokens must follow each
row's last real token); seq2seq rows are right-padded, as the encoder saw them in training.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig

from ctr.config import opt
from ctr.core.model import CTRModel
from ctr.core.prompt_format import PromptEncoder

Inputs = Sequence[str] | Sequence[Sequence[int]]


@dataclass
class GenerateConfig:
    """`ctr generate`: free-form generation from a checkpoint under a code."""

    checkpoint: str = opt("runs/ctr", "CTR checkpoint (run folder, final/ or model folder); "
                                      "--model is the same flag")
    code: str | None = opt(None, "the code to generate with, e.g. 12,5,0,... (L integers in [0, K))")
    task: str | None = opt(None, "use this task's code: a training task of the code table, "
                                 "or a task of --codes-file")
    codes_file: str | None = opt(None, "JSON {task: code} (ctr zero-label / few-shot) read by --task")
    inputs: list[str] = opt([], "input texts (or repeat --input TEXT)")
    input_file: str | None = opt(None, "a text file with one input per line")
    max_new_tokens: int = opt(32, "new tokens at most per input")
    max_input_len: int = opt(1024, "input tokens kept (from the end)")
    sample: bool = opt(False, "sample instead of greedy decoding")
    temperature: float = opt(1.0, "sampling temperature (--sample)")
    top_p: float = opt(1.0, "nucleus sampling mass (--sample)")
    seed: int | None = opt(None, "sampling seed (--sample); the global RNG is left untouched")
    batch_size: int = opt(16, "inputs per generate call")


def encode_texts(model: CTRModel, texts: Sequence[str], max_input_len: int = 1024) -> list[list[int]]:
    """Input ids as training saw its inputs, by the model's prompt format (`ctr.core.prompt_format`):
    a decoder-only input ends with the delimiter when training put it there, so the
    generated answer starts where a trained target starts."""
    return PromptEncoder.for_model(model).sources(list(texts), max_input_len)


def eos_ids(model: CTRModel) -> list[int]:
    """Every id that ends a generation: the tokenizer's EOS (training targets end with it)
    and the backbone's generation EOS (chat models add their end-of-turn token there)."""
    ids: list[int] = []
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        ids.append(model.tokenizer.eos_token_id)
    gen_eos = model.backbone.generation_config.eos_token_id
    for i in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])):
        if i not in ids:
            ids.append(i)
    if not ids and model.backbone.config.eos_token_id is not None:
        ids.append(model.backbone.config.eos_token_id)
    return ids


def _pad_id(model: CTRModel, eos: list[int]) -> int:
    for cand in (model.backbone.generation_config.pad_token_id, model.backbone.config.pad_token_id,
                 getattr(model.tokenizer, "pad_token_id", None)):
        if isinstance(cand, int):
            return cand
    return eos[0] if eos else 0


def _as_id_lists(model: CTRModel, inputs: Inputs, max_input_len: int) -> list[list[int]]:
    if isinstance(inputs, (str, torch.Tensor)):
        raise ValueError("inputs must be a list of texts or of token-id lists")
    inputs = list(inputs)
    if not inputs:
        raise ValueError("no inputs to generate from")
    if all(isinstance(x, str) for x in inputs):
        ids = encode_texts(model, inputs, max_input_len)
    elif all(isinstance(x, (list, tuple)) and all(isinstance(t, int) for t in x) for x in inputs):
        ids = [list(x) for x in inputs]
    else:
        raise ValueError("inputs must be all texts or all token-id lists")
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"inputs {empty} are empty (no tokens)")
    return ids


def _check_decoding(max_new_tokens: int, do_sample: bool, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if do_sample and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")


def _row_codes(model: CTRModel, codes, batch_size: int) -> torch.Tensor | None:
    if not model.config.use_codes:
        if codes is not None:
            raise ValueError("this model has no codes (use_codes=False): pass codes=None")
        return None
    if codes is None:
        raise ValueError("this CTR model needs a code: one [L] or one per input [B, L]")
    if not isinstance(codes, torch.Tensor):
        try:
            codes = torch.as_tensor(codes)
        except (TypeError, ValueError, RuntimeError) as e:  # strings, ragged rows
            raise ValueError(f"codes must be integer lists of length {model.config.code_length}, "
                             f"one or one per input: got {codes!r} ({e})") from None
    return model.check_codes(codes, batch_size)  # shape, range, integer dtype


@torch.no_grad()
def generate_ids_with_codes(model: CTRModel, inputs: Inputs, codes: torch.Tensor | Sequence | None,
                            max_new_tokens: int = 32, do_sample: bool = False,
                            temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                            max_input_len: int = 1024, batch_size: int | None = None,
                            prompt: torch.Tensor | None = None) -> list[list[int]]:
    """New token ids per input, cut before the first EOS.

    `codes` is one code [L] for every input or one per input [B, L] (mixed-task batches).
    `prompt` [P, H] is a continuous prompt (prompt tuning) used instead of a code.
    Greedy by default: each row's tokens then equal a run of that row alone. With
    `do_sample`, `seed` makes a call reproducible; sampled rows share one RNG stream, so
    they depend on the batch they are drawn in.
    """
    _check_decoding(max_new_tokens, do_sample, temperature, top_p)
    ids = _as_id_lists(model, inputs, max_input_len)
    if prompt is not None and codes is not None:
        raise ValueError("pass a code or a continuous prompt, not both")
    row_codes = None if prompt is not None else _row_codes(model, codes, len(ids))
    model.eval()
    step = batch_size or len(ids)
    out: list[list[int]] = []
    with _seeded(seed, model.device):
        for start in range(0, len(ids), step):
            chunk_codes = None if row_codes is None else row_codes[start:start + step]
            out += _generate_batch(model, ids[start:start + step], chunk_codes, max_new_tokens,
                                   do_sample, temperature, top_p, prompt)
    return out


def generate_with_codes(model: CTRModel, inputs: Inputs, codes: torch.Tensor | Sequence | None,
                        max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                        top_p: float = 1.0, seed: int | None = None, max_input_len: int = 1024,
                        batch_size: int | None = None, prompt: torch.Tensor | None = None
                        ) -> list[str]:
    """Generated text per input (see `generate_ids_with_codes`)."""
    if model.tokenizer is None:
        raise ValueError("decoding text needs a tokenizer: use generate_ids_with_codes")
    ids = generate_ids_with_codes(model, inputs, codes, max_new_tokens, do_sample, temperature,
                                  top_p, seed, max_input_len, batch_size, prompt)
    return [model.tokenizer.decode(x, skip_special_tokens=True) for x in ids]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed sampling without disturbing the caller's global RNG state."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _generate_batch(model: CTRModel, ids: list[list[int]], codes: torch.Tensor | None,
                    max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                    prompt: torch.Tensor | None = None) -> list[list[int]]:
    dev = model.device
    width = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    adapter = model.adapter  # padding side, position ids and output layout of the backbone
    x = model.embed_inputs(input_ids.to(dev), mask.to(dev), codes=codes, pad_side=adapter.pad_side,
                           prompt=None if prompt is None else prompt.to(dev))
    eos = eos_ids(model)
    gen = _generation_config(model, eos, max_new_tokens, do_sample, temperature, top_p)
    seqs = model.backbone.generate(inputs_embeds=x.embeds, attention_mask=x.mask,
                                   generation_config=gen, **adapter.position_kwargs(x))
    seqs = adapter.new_tokens(seqs, max_new_tokens)  # [B, <= max_new_tokens]
    return [_cut_at_eos(row, eos) for row in seqs.tolist()]


def _generation_config(model: CTRModel, eos: list[int], max_new_tokens: int, do_sample: bool,
                       temperature: float, top_p: float) -> GenerationConfig:
    """A fresh config: only what we ask for, so a checkpoint's own generation defaults
    (repetition penalty, top-k, ...) cannot make greedy decoding differ from argmax."""
    kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1,
              eos_token_id=eos, pad_token_id=_pad_id(model, eos),
              **model.adapter.generation_options(model.backbone))  # seq2seq: decoder start
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p, top_k=0)  # top_k=0: no top-k cut
    return GenerationConfig(**kw)


def _cut_at_eos(row: list[int], eos: list[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in eos:
            return row[:i]
    return row


# ---- CLI -----------------------------------------------------------------------------
def resolve_code(model: CTRModel, cfg: GenerateConfig) -> list[int] | None:
    """The code asked for by --code or --task (with --codes-file for adapted codes)."""
    from ctr.core.codes import code_for_task, parse_code, read_codes_file
    if not model.config.use_codes:
        if cfg.code or cfg.task:
            raise ValueError("--code/--task given, but the model has no codes")
        return None
    if bool(cfg.code) == bool(cfg.task):
        raise ValueError("pass exactly one of --code or --task")
    if cfg.code:
        code = parse_code(cfg.code)
    else:
        table = read_codes_file(cfg.codes_file)[0] if cfg.codes_file else model.code_table()
        where = f"--codes-file {cfg.codes_file}" if cfg.codes_file else "the code table"
        code = code_for_task(table, cfg.task, where)
    try:
        model.check_codes(torch.tensor(code))
    except (ValueError, TypeError) as e:
        raise ValueError(f"code {code}: {e}") from None
    return [int(c) for c in code]


def read_inputs(cfg: GenerateConfig) -> list[str]:
    texts = list(cfg.inputs)
    if cfg.input_file:
        path = Path(cfg.input_file)
        if not path.exists():
            raise FileNotFoundError(f"--input-file {path}: no such file")
        texts += [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError("no inputs: pass --input TEXT (repeatable) or --input-file F")
    return texts


def run_generate(cfg: GenerateConfig) -> list[str]:
    from ctr.core.loading import load_model
    texts = read_inputs(cfg)  # cheap checks before loading a model
    _check_decoding(cfg.max_new_tokens, cfg.sample, cfg.temperature, cfg.top_p)
    model = load_model(cfg.checkpoint)
    code = resolve_code(model, cfg)
    outs = generate_with_codes(model, texts, code, cfg.max_new_tokens, cfg.sample, cfg.temperature,
                               cfg.top_p, cfg.seed, cfg.max_input_len, cfg.batch_size)
    for text, out in zip(texts, outs):
        print(f">>> {text}\n{out}\n")
    return outs
