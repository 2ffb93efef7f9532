"""Tiny random backbones and a character tokenizer, built from configs (no hub access).

Used by the tests and by quick smoke runs: a few hundred thousand parameters.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast,
                          T5Config, T5ForConditionalGeneration)

SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + list(string.printable))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")


def tiny_backbone(arch: str = "llama", hidden: int = 32, layers: int = 2, seed: int = 0,
                  vocab_size: int | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny random 'llama' (decoder-only) or 't5' (seq2seq) model and its tokenizer."""
    tok = char_tokenizer()
    v = vocab_size or len(tok)
    torch.manual_seed(seed)
    if arch == "t5":
        cfg = T5Config(vocab_size=v, d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden,
                       num_layers=layers, num_heads=4, dropout_rate=0.0, pad_token_id=0,
                       eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)
        model = T5ForConditionalGeneration(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(vocab_size=v, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=1024, pad_token_id=0, eos_token_id=1,
                          bos_token_id=3, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"arch must be 'llama' or 't5', got {arch!r}")
    model.eval()
    return model, tok


def save_tiny_backbone(path: str | Path, arch: str = "llama", **kw) -> Path:
    model, tok = tiny_backbone(arch, **kw)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
