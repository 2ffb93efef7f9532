"""CTRModel: shapes, masks, codes, padding/batch invariance, save/load, errors."""
from __future__ import annotations

import pytest
import torch

from ctr.train.batching import Encoded, collate
from ctr.config import CTRConfig
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone

ARCHS = ["llama", "t5"]


def make_model(arch: str, quantizer: str = "plain", L: int = 4, K: int = 16, **kw) -> CTRModel:
    backbone, tok = tiny_backbone(arch)
    cfg = CTRConfig(code_length=L, codebook_size=K, task_names=["a", "b", "c"], quantizer=quantizer,
                    codebook_init_scale=1.0, **kw)
    torch.manual_seed(1)
    return CTRModel(backbone, cfg, tok).eval()


ROWS = [Encoded(0, [20, 21, 22, 23, 24, 25], [30, 31, 1]),
        Encoded(1, [20, 26], [32, 1]),
        Encoded(2, [27, 28, 29], [33, 34, 35, 36, 1])]


def batch(rows, arch, side="right"):
    return collate(rows, 0, arch == "t5", side)


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_mask_extension(arch):
    model = make_model(arch)
    seen = {}
    target = model.backbone.get_encoder() if arch == "t5" else model.backbone.model

    def grab(module, args, kwargs):
        seen["mask"] = kwargs["attention_mask"].clone()
        seen["embeds"] = kwargs["inputs_embeds"].clone()
    target.register_forward_pre_hook(grab, with_kwargs=True)
    b = batch(ROWS, arch)
    out = model(**b, return_logits=True)
    B, T = b["input_ids"].shape
    L, H = model.config.code_length, model.backbone.config.hidden_size if arch == "llama" else 32
    assert seen["mask"].shape == (B, T + L)
    assert torch.equal(seen["mask"][:, :L], torch.ones(B, L, dtype=seen["mask"].dtype))
    assert torch.equal(seen["mask"][:, L:], b["attention_mask"])  # right padded already
    assert seen["embeds"].shape == (B, T + L, H)
    prompt, _, _ = model.soft_prompt(B, codes=out.codes)
    assert torch.allclose(seen["embeds"][:, :L], prompt)
    assert out.codes.shape == (B, L)
    V = model.backbone.config.vocab_size
    if arch == "llama":
        assert out.logits.shape == (B, T, V)  # aligned with the caller's tokens
    else:
        assert out.logits.shape == (B, b["labels"].shape[1], V)
    assert out.example_loss.shape == (B,)
    assert torch.equal(out.target_tokens, (b["labels"] != -100).sum(1))


@pytest.mark.parametrize("arch", ARCHS)
def test_code_changes_output_and_task_ids_equal_their_codes(arch):
    model = make_model(arch)
    b = batch(ROWS, arch)
    by_task = model(**b)
    by_code = model(**{k: v for k, v in b.items() if k != "task_ids"}, codes=by_task.codes)
    assert torch.allclose(by_task.example_loss, by_code.example_loss, atol=1e-6)
    other = (by_task.codes + 1) % model.config.codebook_size
    changed = model(**{k: v for k, v in b.items() if k != "task_ids"}, codes=other)
    assert not torch.allclose(by_task.example_loss, changed.example_loss)


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_composition_and_padding_side_do_not_change_losses(arch):
    model = make_model(arch)
    alone = torch.cat([model(**batch([r], arch)).example_loss for r in ROWS])
    for side in ("right", "left"):
        together = model(**batch(ROWS, arch, side)).example_loss
        assert torch.allclose(alone, together, atol=1e-5), side
        reordered = model(**batch(ROWS[::-1], arch, side)).example_loss
        assert torch.allclose(alone, reordered.flip(0), atol=1e-5), side


def test_left_padding_logits_align_with_caller_tokens():
    model = make_model("llama")
    right = model(**batch(ROWS, "llama", "right"), return_logits=True)
    left = model(**batch(ROWS, "llama", "left"), return_logits=True)
    for i, r in enumerate(ROWS):
        n = len(r.source) + len(r.target)
        assert torch.allclose(right.logits[i, :n], left.logits[i, -n:], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_target_only_loss_equals_full_logits_loss(arch):
    model = make_model(arch)
    b = batch(ROWS, arch)
    a = model(**b, target_only=True)
    f = model(**b, target_only=False)
    assert torch.allclose(a.example_loss, f.example_loss, atol=1e-5)


def test_straight_through_gradient_and_vq_loss_terms():
    model = make_model("llama", beta=0.25)
    q = model.quantizer.train()
    z = torch.randn(5, 4, q.dim, requires_grad=True)
    out = q(z)
    assert torch.allclose(out.quantized, q.codebook[out.codes], atol=1e-6)  # forward: codebook vectors
    w = torch.randn_like(z)
    (out.quantized * w).sum().backward()
    assert torch.equal(z.grad, w)  # straight-through: gradient passes unchanged
    assert q.codebook.grad is None  # ...and the codebook gets none from the task loss
    z.grad = None
    out = q(z)
    out.loss.backward()
    cb = q.codebook[out.codes].detach()
    mse = (cb - z.detach()).pow(2).mean()
    assert torch.allclose(out.loss, mse * 1.25, atol=1e-6)  # codebook + beta * commitment
    assert torch.allclose(z.grad, 0.25 * 2 * (z.detach() - cb) / z.numel(), atol=1e-7)
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0


def test_ema_quantizer_updates_buffers_in_place():
    model = make_model("llama", quantizer="ema")
    cb = model.quantizer.vq._codebook
    params_before = {n: p for n, p in model.named_parameters()}
    ptr, before = cb.embed.data_ptr(), cb.embed.clone()
    model.train()
    model(**batch(ROWS, "llama"))
    assert cb.embed.data_ptr() == ptr and not torch.equal(cb.embed, before)
    assert {n: p for n, p in model.named_parameters()} == params_before
    assert "quantizer.vq._codebook.embed" not in dict(model.named_parameters())


@pytest.mark.parametrize("quantizer", ["plain", "ema"])
def test_kmeans_init_places_codes_on_task_encodings(quantizer):
    model = make_model("llama", quantizer=quantizer, kmeans_init=True, K=8)
    z = model.encode_tasks(torch.arange(3)).reshape(-1, model.config.code_dim).detach()
    random_cb = torch.empty(8, z.shape[1]).uniform_(-1, 1)
    inertia_random = torch.cdist(z, random_cb).min(1).values.pow(2).sum()
    model.kmeans_init()
    dist = torch.cdist(z, model.quantizer.weight.detach()).min(1).values
    assert dist.pow(2).sum() < 0.5 * inertia_random
    assert (dist < 1e-4).sum() >= 4  # 12 encodings in 8 clusters: several sit alone on a centroid


def test_dead_code_revival_moves_unused_codes():
    model = make_model("llama", dead_code_threshold=0.5, K=16)
    q = model.quantizer.train()
    before = q.codebook.detach().clone()
    z = torch.randn(4, 4, q.dim)
    for _ in range(80):  # usage EMA of never-picked codes decays below the threshold
        q(z)
    moved = (q.codebook.detach() != before).any(1)
    assert moved.any()
    assert (q.usage > 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_gives_identical_logits(arch, tmp_path):
    model = make_model(arch, quantizer="ema")
    b = batch(ROWS, arch)
    model.train()
    model(**b)  # move the EMA buffers away from their init
    model.eval()
    before = model(**b, return_logits=True)
    model.config.backbone = "unused"
    model.save_pretrained(tmp_path / "ckpt", save_backbone=True)
    loaded = CTRModel.from_pretrained(tmp_path / "ckpt").eval()
    after = loaded(**b, return_logits=True)
    assert torch.equal(before.codes, after.codes)
    assert torch.equal(before.logits, after.logits)
    assert loaded.code_table() == model.code_table()
    assert (tmp_path / "ckpt" / "code_table.json").exists()
    assert not list((tmp_path / "ckpt").rglob("*.bin")) and not list((tmp_path / "ckpt").rglob("*.pt"))


def test_bad_codes_and_task_ids_are_clear_errors():
    model = make_model("llama")
    b = batch(ROWS, "llama")
    no_ids = {k: v for k, v in b.items() if k != "task_ids"}
    with pytest.raises(ValueError, match="exactly one"):
        model(**no_ids)
    with pytest.raises(ValueError, match="exactly one"):
        model(**b, codes=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[batch, 4\]"):
        model(**no_ids, codes=torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(**no_ids, codes=torch.full((3, 4), 16))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(**no_ids, codes=torch.full((3, 4), -1))
    with pytest.raises(ValueError, match="integer"):
        model(**no_ids, codes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="rows for a batch"):
        model(**no_ids, codes=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="task_ids"):
        model(**no_ids, task_ids=torch.tensor([0, 1, 7]))


def test_one_code_broadcasts_over_the_batch():
    model = make_model("llama")
    b = {k: v for k, v in batch(ROWS, "llama").items() if k != "task_ids"}
    code = torch.tensor([1, 2, 3, 4])
    one = model(**b, codes=code)
    full = model(**b, codes=code.expand(3, 4))
    assert torch.equal(one.example_loss, full.example_loss)


def test_missing_model_path_is_a_clear_error(tmp_path):
    from ctr.core.backbone import load_backbone
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_backbone(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not a CTR checkpoint"):
        CTRModel.from_pretrained(tmp_path / "empty")
