"""Generation under a code: equals a manual greedy loop over CTRModel.forward, mixed-code
batches equal per-row runs, bad codes fail clearly, `ctr generate` end to end."""
from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from ctr.core.backbone import load_backbone
from ctr.cli import main
from ctr.config import CTRConfig
from ctr.inference.generation import encode_texts, eos_ids, generate_ids_with_codes, generate_with_codes
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone

L, K = 3, 8
TEXTS = ["word: cat", "a longer input: tree", "sun", "word: fish and rock"]
CODES = [[0, 1, 2], [7, 7, 7], [3, 0, 5], [0, 1, 2]]


def tiny_ctr(arch: str) -> CTRModel:
    backbone, tok = tiny_backbone(arch)
    torch.manual_seed(1)
    model = CTRModel(backbone, CTRConfig(task_names=["a", "b"], code_length=L, codebook_size=K), tok)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "t5"])
def model(request) -> CTRModel:
    return tiny_ctr(request.param)


@torch.no_grad()
def manual_greedy(model: CTRModel, ids: list[int], code: list[int], n: int) -> list[int]:
    """Argmax of CTRModel.forward's last logits, one token at a time, no cache, no padding."""
    eos, gen, codes = eos_ids(model), [], torch.tensor([code])
    for _ in range(n):
        if model.seq2seq:  # the decoder reads [start] + gen; the last label is a placeholder
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([gen + [0]]),
                        codes=codes, return_logits=True)
        else:
            out = model(input_ids=torch.tensor([ids + gen]), codes=codes)
        nxt = int(out.logits[0, -1].argmax())
        if nxt in eos:
            break
        gen.append(nxt)
    return gen


def test_greedy_generation_equals_manual_forward_loop(model):
    ids = encode_texts(model, TEXTS)
    got = generate_ids_with_codes(model, TEXTS, torch.tensor(CODES), max_new_tokens=8)
    want = [manual_greedy(model, i, c, 8) for i, c in zip(ids, CODES)]
    assert got == want
    assert any(len(g) > 0 for g in got)  # the comparison is not between empty outputs


def test_mixed_code_batch_equals_each_row_alone(model):
    batch = generate_ids_with_codes(model, TEXTS, torch.tensor(CODES), max_new_tokens=10)
    alone = [generate_ids_with_codes(model, [t], torch.tensor(c), max_new_tokens=10)[0]
             for t, c in zip(TEXTS, CODES)]
    assert batch == alone
    # the code matters: the same input under other codes gives other tokens
    same_input = generate_ids_with_codes(model, [TEXTS[0]] * 3, torch.tensor(CODES[:3]),
                                         max_new_tokens=10)
    assert len({tuple(x) for x in same_input}) > 1
    # one code [L] for every row equals that code repeated per row
    one = generate_ids_with_codes(model, TEXTS, torch.tensor(CODES[1]), max_new_tokens=10)
    assert one == generate_ids_with_codes(model, TEXTS, torch.tensor([CODES[1]] * 4), max_new_tokens=10)


def test_batch_size_split_and_text_output(model):
    whole = generate_ids_with_codes(model, TEXTS, CODES, max_new_tokens=6)
    assert generate_ids_with_codes(model, TEXTS, CODES, max_new_tokens=6, batch_size=3) == whole
    texts = generate_with_codes(model, TEXTS, CODES, max_new_tokens=6)
    assert texts == [model.tokenizer.decode(x, skip_special_tokens=True) for x in whole]


def test_decoder_only_generate_with_embeddings_returns_only_new_tokens():
    backbone, _ = tiny_backbone("llama")
    embeds = backbone.get_input_embeddings()(torch.tensor([[5, 6, 7, 8, 9, 10, 11]]))
    cfg = GenerationConfig(max_new_tokens=5, min_new_tokens=5, do_sample=False, eos_token_id=1,
                           pad_token_id=0)
    out = backbone.generate(inputs_embeds=embeds, attention_mask=torch.ones(1, 7, dtype=torch.long),
                            generation_config=cfg)
    assert out.shape == (1, 5)  # 7 prompt positions are not echoed


def test_sampling_is_seeded_and_leaves_global_rng_alone(model):
    state = torch.get_rng_state()
    kw = dict(max_new_tokens=8, do_sample=True, temperature=2.0, seed=3)
    a = generate_ids_with_codes(model, TEXTS, CODES, **kw)
    assert torch.equal(state, torch.get_rng_state())
    assert a == generate_ids_with_codes(model, TEXTS, CODES, **kw)
    outs = {tuple(map(tuple, generate_ids_with_codes(model, TEXTS, CODES, **{**kw, "seed": s})))
            for s in range(4)}
    assert len(outs) > 1


@pytest.mark.parametrize("codes,match", [
    ([0, 1], r"shape \[batch, 3\]"),
    ([0, 1, 8], r"\[0, 8\)"),
    ([-1, 0, 0], r"\[0, 8\)"),
    ([0.0, 1.0, 2.0], "integer"),
    ([[0, 1, 2], [0, 1, 2]], "2 rows for a batch of 4"),
    (["a", "b", "c"], "integer"),
    (None, "needs a code"),
])
def test_bad_codes_raise_clear_errors(model, codes, match):
    with pytest.raises(ValueError, match=match):
        generate_ids_with_codes(model, TEXTS, codes, max_new_tokens=2)


def test_bad_decoding_options_and_inputs(model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids_with_codes(model, TEXTS, CODES[0], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate_ids_with_codes(model, TEXTS, CODES[0], do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="empty"):
        generate_ids_with_codes(model, [[5, 6], []], CODES[0])
    with pytest.raises(ValueError, match="list of texts"):
        generate_ids_with_codes(model, "one string", CODES[0])


def test_cli_generate(tiny_paths, tmp_path, capsys):
    backbone, tok = load_backbone(str(tiny_paths["llama"]))
    model = CTRModel(backbone, CTRConfig(task_names=["t0", "t1"], code_length=L, codebook_size=K,
                                         backbone=str(tiny_paths["llama"])), tok)
    model.save_pretrained(tmp_path / "m")
    args = ["generate", "--model", str(tmp_path / "m"), "--input", "word: cat", "--input", "sun",
            "--max-new-tokens", "4"]
    assert main(args + ["--code", "1,2,3"]) == 0
    out = capsys.readouterr().out
    assert ">>> word: cat" in out and ">>> sun" in out
    want = generate_with_codes(model, ["word: cat", "sun"], [1, 2, 3], max_new_tokens=4)
    assert all(w in out for w in want)
    task_code = model.code_table()["t1"]
    assert main(args + ["--task", "t1"]) == 0
    want = generate_with_codes(model, ["word: cat", "sun"], task_code, max_new_tokens=4)
    out = capsys.readouterr().out
    assert all(w in out for w in want)
    assert main(args + ["--code", "1,2,9"]) == 2
    assert "[0, 8)" in capsys.readouterr().err
    assert main(args + ["--code", "1,2"]) == 2
    assert main(args + ["--task", "nope"]) == 2
    assert "not in the code table" in capsys.readouterr().err


def test_a_continuous_prompt_generates_like_the_code_it_was_made_from(model):
    """Prompt tuning is evaluated by generating under its prompt: the prompt of a code
    (its soft-prompt vectors) must give exactly that code's tokens."""
    code = CODES[2]
    with torch.no_grad():
        prompt = model.soft_prompt(1, codes=torch.tensor([code]))[0][0]
    by_code = generate_ids_with_codes(model, TEXTS, code, max_new_tokens=6)
    assert generate_ids_with_codes(model, TEXTS, None, max_new_tokens=6, prompt=prompt) == by_code
    with pytest.raises(ValueError, match="not both"):
        generate_ids_with_codes(model, TEXTS, code, max_new_tokens=6, prompt=prompt)
