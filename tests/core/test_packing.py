"""Packed passes (ctr.core.packing): one sequence per pass, the padded pass's loss and
gradients, attention that stays inside each row, and SDPA for every unpacked call."""
from __future__ import annotations

import random

import pytest
import torch

from ctr.config import CTRConfig
from ctr.core.model import CTRModel
from ctr.core.packing import PACKED_ATTENTION, pack_rows, packed_positions, packing_problem
from ctr.core.testing import tiny_backbone
from ctr.train.batching import Encoded, collate


def test_layout_of_two_rows():
    ids, p = pack_rows([[10, 11], []], [[12], [13, 14]], prompt_len=2, multiple=5)
    assert ids.tolist() == [10, 11, 12, 13, 14]
    # row 0: prompt slots 0 1, tokens at 4 5 6 (prompts take the first 2 x 2 sources);
    # row 1: prompt slots 2 3, tokens 7 8; one end-padding position reads the zero row (9)
    assert p.layout.tolist() == [0, 1, 4, 5, 6, 2, 3, 7, 8, 9]
    assert p.position_ids.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0]
    assert p.cu_seq_lens.tolist() == [0, 5, 9, 10] and p.max_length == 5
    assert p.targets.tolist() == [12, 13, 14] and p.target_rows.tolist() == [0, 1, 1]
    assert p.predict_at.tolist() == [3, 6, 7]  # the position before each target
    assert packed_positions([3, 2], 2, 5) == 10 - 4 and packed_positions([3, 2], 2) == 5


def test_a_row_first_target_without_prompt_or_source_is_not_predicted():
    _, p = pack_rows([[], [7]], [[1, 2], [3]], prompt_len=0)
    assert p.targets.tolist() == [2, 3] and p.predict_at.tolist() == [0, 2]


def model_and_rows(stage: int, seed: int = 0):
    torch.manual_seed(seed)
    backbone, tok = tiny_backbone("llama")
    model = CTRModel(backbone, CTRConfig(task_names=["a", "b", "c"], code_length=3, codebook_size=8),
                     tok).train()
    if stage == 1:
        model.freeze_backbone()
    rnd = random.Random(seed)
    word = lambda n: [rnd.randint(4, 90) for _ in range(n)]
    # mixed tasks (so mixed codes) and lengths in one pass, an empty source among them
    rows = [Encoded(i % 3, word(rnd.randint(0, 40)), word(rnd.randint(1, 7))) for i in range(9)]
    return model, rows


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    (out.token_loss_sum + out.vq_loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def packed_batch(model, rows, multiple=1):
    batch = model.adapter.collate_packed([r.source for r in rows], [r.target for r in rows],
                                         model.config.code_length, multiple)
    return {**batch, "task_ids": torch.tensor([r.task_id for r in rows])}


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("multiple", [1, 64])
def test_packed_pass_gives_the_padded_loss_and_gradients(stage, multiple):
    model, rows = model_and_rows(stage)
    ref, ref_grads = loss_and_grads(model, collate(rows, 0, model.adapter))
    out, grads = loss_and_grads(model, packed_batch(model, rows, multiple))
    assert model.backbone.config._attn_implementation == PACKED_ATTENTION
    assert torch.equal(out.target_tokens, ref.target_tokens)
    torch.testing.assert_close(out.example_loss_sum, ref.example_loss_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.token_loss_sum, ref.token_loss_sum, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.codes, ref.codes)
    assert grads.keys() == ref_grads.keys()
    assert any(n.startswith("backbone.") for n in grads) == (stage == 2)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-5, atol=1e-5, msg=n)


def test_attention_stays_inside_each_row():
    model, rows = model_and_rows(2)
    model.eval()
    with torch.no_grad():
        before = model(**packed_batch(model, rows)).example_loss_sum
        changed = list(rows)
        r = rows[4]  # new tokens, same lengths: only row 4's loss may move
        changed[4] = Encoded(r.task_id, [(x + 7) % 90 + 4 for x in r.source], r.target)
        after = model(**packed_batch(model, changed)).example_loss_sum
    others = [i for i in range(len(rows)) if i != 4]
    assert torch.equal(before[others], after[others])
    assert before[4] != after[4]


def test_unpacked_calls_after_packing_are_sdpa_as_before():
    model, rows = model_and_rows(2)
    model.eval()
    padded = collate(rows, 0, model.adapter, padding_side="left")  # padding: SDPA needs masks
    with torch.no_grad():
        ref = model(**padded).example_loss_sum
        model(**packed_batch(model, rows))  # switches the backbone to the packed implementation
        assert model.backbone.config._attn_implementation == PACKED_ATTENTION
        torch.testing.assert_close(model(**padded).example_loss_sum, ref, rtol=0, atol=0)


def test_which_backbones_pack():
    assert packing_problem(tiny_backbone("llama")[0]) is None
    assert "encoder-decoder" in packing_problem(tiny_backbone("t5")[0])
    eager, _ = tiny_backbone("llama")
    eager.config._attn_implementation = "eager"
    assert "eager" in packing_problem(eager)


def test_packed_pass_refuses_padded_arguments():
    model, rows = model_and_rows(1)
    batch = packed_batch(model, rows)
    with pytest.raises(ValueError, match="packed pass takes no"):
        model(**batch, labels=torch.zeros(1, dtype=torch.long))
    bad = dict(batch, packed=pack_rows([r.source for r in rows], [r.target for r in rows], 5)[1])
    with pytest.raises(ValueError, match="5 prompt positions per row"):
        model(**bad)
