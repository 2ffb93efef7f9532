"""Backbone adapters: the factory, the batch layouts each backbone expects, and that no
seq2seq / decoder-only branch is left outside ctr/core/adapter.py."""
from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest
import torch

import ctr
from ctr.config import CTRConfig
from ctr.core.adapter import (
    IGNORE,
    BackboneAdapter,
    DecoderOnlyAdapter,
    Seq2SeqAdapter,
    adapter_for,
)
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone

SOURCES = [[5, 6, 7], [5]]
TARGETS = [[8, 1], [9, 10, 1]]


@pytest.mark.parametrize("arch, cls", [("t5", Seq2SeqAdapter), ("llama", DecoderOnlyAdapter)])
def test_factory_picks_the_adapter_of_the_backbone(arch, cls):
    backbone, tok = tiny_backbone(arch)
    adapter = adapter_for(backbone)
    assert type(adapter) is cls and isinstance(adapter, BackboneAdapter)
    assert adapter.seq2seq == (arch == "t5")
    assert adapter_for(adapter) is adapter  # an adapter passes through
    assert adapter_for(arch == "t5") is adapter  # the older seq2seq flag
    model = CTRModel(backbone, CTRConfig(task_names=["a"]), tok)
    assert model.adapter is adapter
    assert model.seq2seq == (arch == "t5")
    with pytest.raises(AttributeError):  # read-only: the adapter decides
        model.seq2seq = arch != "t5"


def test_the_abstract_adapter_cannot_be_built():
    with pytest.raises(TypeError):
        BackboneAdapter()


@pytest.mark.parametrize("side", ["right", "left"])
def test_seq2seq_collate_pads_the_encoder_input_and_right_pads_the_decoder_labels(side):
    b = Seq2SeqAdapter().collate(SOURCES, TARGETS, pad_id=0, padding_side=side)
    assert set(b) == {"input_ids", "attention_mask", "labels"}  # decoder inputs come from labels
    ids = [[5, 6, 7], [5, 0, 0]] if side == "right" else [[5, 6, 7], [0, 0, 5]]
    assert b["input_ids"].tolist() == ids
    assert b["attention_mask"].tolist() == [[int(t != 0) for t in row] for row in ids]
    assert b["labels"].tolist() == [[8, 1, IGNORE], [9, 10, 1]]  # decoder targets start at 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_decoder_only_collate_joins_source_and_target_with_aligned_labels(side):
    b = DecoderOnlyAdapter().collate(SOURCES, TARGETS, pad_id=0, padding_side=side)
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    if side == "right":
        assert b["input_ids"].tolist() == [[5, 6, 7, 8, 1], [5, 9, 10, 1, 0]]
        assert b["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 8, 1], [IGNORE, 9, 10, 1, IGNORE]]
    else:
        assert b["input_ids"].tolist() == [[5, 6, 7, 8, 1], [0, 5, 9, 10, 1]]
        assert b["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 8, 1], [IGNORE, IGNORE, 9, 10, 1]]
    assert b["attention_mask"].tolist() == [[int(t != 0) for t in row] for row in b["input_ids"].tolist()]


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_collated_batches_are_what_the_backbone_expects(arch):
    """Without codes, CTR's loss on an adapter-collated batch is the backbone's own HF loss."""
    backbone, tok = tiny_backbone(arch)
    model = CTRModel(backbone, CTRConfig(use_codes=False), tok).eval()
    b = model.adapter.collate([[20, 21, 22, 23], [24, 25]], [[30, 31, 1], [32, 1]], pad_id=0)
    with torch.no_grad():
        ours = model(**b).lm_loss
        theirs = backbone(**b).loss  # HF shifts decoder-only labels / builds decoder inputs
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_inference_settings_per_adapter():
    s2s, dec = Seq2SeqAdapter(), DecoderOnlyAdapter()
    assert (s2s.pad_side, dec.pad_side) == ("right", "left")
    t5, _ = tiny_backbone("t5")
    assert s2s.generation_options(t5) == {"decoder_start_token_id": 0}
    llama, _ = tiny_backbone("llama")
    assert dec.generation_options(llama) == {}
    seqs = torch.tensor([[0, 7, 8], [0, 9, 1]])
    assert s2s.new_tokens(seqs, 2).tolist() == [[7, 8], [9, 1]]  # the decoder start token goes
    assert dec.new_tokens(seqs, 3) is seqs
    with pytest.raises(RuntimeError, match="echoed the prompt"):
        dec.new_tokens(seqs, 2)


def test_prompt_format_rules_per_adapter():
    s2s, dec = Seq2SeqAdapter(), DecoderOnlyAdapter()
    assert s2s.finish_source([1, 2, 3, 4], 3, eos=9) == [3, 4, 9]  # room kept for EOS
    assert dec.finish_source([1, 2, 3, 4], 3, eos=9) == [2, 3, 4]
    assert s2s.finish_target([5, 6], None, 9, target_eos=True, scoring=True) == [5, 6, 9]
    assert dec.finish_target([5, 6], None, 9, target_eos=True, scoring=True) == [5, 6]
    assert dec.finish_target([5, 6], None, 9, target_eos=True) == [5, 6, 9]
    _, tok = tiny_backbone("llama")
    assert s2s.delimiter_split(tok, "\n") == ("", "")
    assert dec.delimiter_split(tok, "\n") == ("\n", "")  # char tokens: the delimiter ends the input
    assert (s2s.sequence_delimiter(" "), dec.sequence_delimiter(" ")) == ("", " ")


# ---- no architecture branch outside the adapter --------------------------------------
ALLOWED = {"core/adapter.py", "core/backbone.py"}  # the adapter and the backbone loader
FLAGS = {"seq2seq", "is_encoder_decoder"}
BRANCH = {"if", "elif", "else", "while", "and", "or"}


def architecture_branches(source: str) -> list[int]:
    """Lines of code (comments and strings aside) that branch on the architecture: a
    logical line naming seq2seq / is_encoder_decoder next to if/elif/else/while/and/or, or any
    is_encoder_decoder call (a flag derived to branch on later)."""
    found, names, start = [], set(), None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME:
            names.add(tok.string)
            start = start or tok.start[0]
        elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if (names & FLAGS and names & BRANCH) or "is_encoder_decoder" in names:
                found.append(start)
            names, start = set(), None
    return found


def test_the_branch_finder_finds_branches():
    assert architecture_branches("x = 1\nif model.seq2seq:\n    y = 2\n") == [2]
    assert architecture_branches("side = 'right' if seq2seq else 'left'\n") == [1]
    assert architecture_branches("flag = is_encoder_decoder(bb)\n") == [1]
    assert architecture_branches("a = seq2seq or probe()\n") == [1]
    assert architecture_branches('"""if seq2seq"""\nx = 1  # if seq2seq\n') == []
    assert architecture_branches("batch = collate(rows, pad, model.seq2seq)\n") == []


def test_no_seq2seq_branch_outside_the_adapter():
    root = Path(ctr.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in ALLOWED:
            continue
        offenders += [f"ctr/{rel}:{n}" for n in architecture_branches(path.read_text())]
    assert not offenders, f"architecture branches outside ctr/core/adapter.py: {offenders}"


def test_training_flops_count_the_body_attention_and_head_per_row():
    """ctr.bench.throughput's formula: k x (2 N P + 4 layers d P^2 + 2 d V T), k = 3 trained, 2 frozen."""
    from ctr.core.adapter import DecoderOnlyAdapter, Seq2SeqAdapter
    from ctr.core.testing import tiny_backbone
    llama, _ = tiny_backbone("llama")
    cfg = llama.config
    n = sum(p.numel() for name, p in llama.named_parameters()
            if "embed_tokens" not in name and "lm_head" not in name)
    row = lambda s, t, k: k * (2 * n * (s + t + 4) + 4 * cfg.num_hidden_layers * cfg.hidden_size * (s + t + 4) ** 2
                               + 2 * cfg.hidden_size * cfg.vocab_size * t)
    lengths = [(7, 2), (3, 5)]
    assert DecoderOnlyAdapter().training_flops(llama, lengths, 4, False) == sum(row(s, t, 3) for s, t in lengths)
    assert DecoderOnlyAdapter().training_flops(llama, lengths, 4, True) == sum(row(s, t, 2) for s, t in lengths)
    t5, _ = tiny_backbone("t5")
    assert Seq2SeqAdapter().training_flops(t5, lengths, 4, False) is None
