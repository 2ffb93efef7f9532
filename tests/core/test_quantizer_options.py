"""The codebook options against collapse: every task quantised at every step, dead-code
revival from every task, the rotation trick, the code-usage entropy term; each checked
against the quantity it claims, computed here independently."""
from __future__ import annotations

import pytest
import torch
from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to

from ctr.config import CTRConfig
from ctr.core.model import CTRModel
from ctr.core.quantizer import revival_picks, usage_entropy_loss
from ctr.core.testing import tiny_backbone
from ctr.train.batching import Encoded, collate

NAMES = ["a", "b", "c", "d", "e"]


def make(quantizer="plain", **kw) -> CTRModel:
    backbone, tok = tiny_backbone("llama")
    torch.manual_seed(0)
    cfg = CTRConfig(code_length=3, codebook_size=16, task_names=NAMES, quantizer=quantizer,
                    codebook_init_scale=1.0, **kw)
    return CTRModel(backbone, cfg, tok)


def one_task_batch(task: int) -> dict:
    return collate([Encoded(task, [20, 21, 22], [30, 31, 1]), Encoded(task, [23, 24], [32, 1])], 0, False)


def test_every_task_quantised_gives_every_tasks_vq_loss_and_codebook_gradient():
    model = make(quantize_all_tasks=True).train()
    q = model.quantizer
    z = model.encode_tasks(torch.arange(len(NAMES))).detach()
    codes = torch.cdist(z.reshape(-1, z.shape[-1]), q.codebook.detach()).argmin(-1)
    cb = q.codebook.detach()[codes].reshape(z.shape)
    want = (cb - z).pow(2).mean() * (1 + model.config.beta)  # codebook + beta * commitment
    out = model(**one_task_batch(0))  # a batch of task 0 alone
    assert torch.allclose(out.vq_loss, want, atol=1e-6)
    out.vq_loss.backward()
    others = set(codes.reshape(len(NAMES), -1)[1:].flatten().tolist()) - set(codes[:3].tolist())
    assert others, "the test needs a value only other tasks use"
    for v in others:  # values no task of this batch uses still move towards their tasks
        assert q.codebook.grad[v].abs().sum() > 0
    model.eval()  # outside training the batch's rows alone are quantised
    z0 = model.encode_tasks(torch.tensor([0])).detach()
    assert torch.allclose(model(**one_task_batch(0)).vq_loss,
                          (q.codebook.detach()[q.nearest(z0)] - z0).pow(2).mean() * 1.1, atol=1e-6)


def test_batch_mode_vq_loss_sees_the_batch_only():
    model = make().train()
    z0 = model.encode_tasks(torch.tensor([0])).detach()
    want = (model.quantizer.codebook.detach()[model.quantizer.nearest(z0)] - z0).pow(2).mean() * 1.1
    assert torch.allclose(model(**one_task_batch(0)).vq_loss, want, atol=1e-6)


def test_ema_step_once_per_optimizer_step_from_every_task():
    model = make("ema", quantize_all_tasks=True, ema_decay=0.5).train()
    q, cb = model.quantizer, model.quantizer.vq._codebook
    q.defer_usage = True
    size, avg = cb.cluster_size.clone(), cb.embed_avg.clone()
    before = q.weight.detach().clone()
    for task in (0, 1):  # two forward passes of one step
        model(**one_task_batch(task))
    assert torch.equal(q.weight, before)  # forward passes only look up
    q.end_step(seed=0)
    z = model.encode_tasks(torch.arange(len(NAMES))).detach().reshape(-1, q.dim)
    onehot = torch.nn.functional.one_hot(torch.cdist(z, before).argmin(-1), 16).float()
    size = 0.5 * size + 0.5 * onehot.sum(0)  # one EMA step over all 5 x 3 encodings
    avg = 0.5 * avg + 0.5 * (onehot.t() @ z)
    smoothed = (size + 1e-5) / (size.sum() + 16 * 1e-5) * size.sum()  # the library's Laplace smoothing
    assert torch.allclose(cb.cluster_size, size, atol=1e-6)
    assert torch.allclose(q.weight, (avg / smoothed[0][:, None])[0], atol=1e-5)


@pytest.mark.parametrize("quantizer", ["plain", "ema"])
def test_revival_replaces_dead_values_only_with_encodings_of_any_task(quantizer):
    # usage starts at 1 and decays by one step (plain 0.99, ema 0.8 here): unused values die
    model = make(quantizer, quantize_all_tasks=True, dead_code_threshold=0.995).train()
    q = model.quantizer
    q.defer_usage = True
    z = model.encode_tasks(torch.arange(len(NAMES))).detach().reshape(-1, q.dim)
    before = q.weight.detach().clone()
    used = torch.cdist(z, before).argmin(-1).unique()
    model(**one_task_batch(0))
    q.end_step(seed=0)
    after = q.weight.detach()
    dead = torch.tensor([v for v in range(16) if v not in used.tolist()])
    assert q.revived == len(dead) > 0
    for v in dead.tolist():  # each dead value now sits on one task's encoding
        assert torch.cdist(after[v][None], z).min() < 1e-5
    if quantizer == "plain":  # values in use keep their vectors (plain: no EMA)
        assert torch.equal(after[used], before[used])
    batch_rows = z.reshape(len(NAMES), -1, q.dim)[0]
    outside = [v for v in dead.tolist() if torch.cdist(after[v][None], batch_rows).min() > 1e-5]
    assert outside, "revival drew only from the batch's task"


def test_revival_never_copies_a_value_in_use_and_prefers_the_worst_served_encodings():
    torch.manual_seed(0)
    centers = torch.randn(7, 8)
    live, dead = centers[:4], torch.arange(4, 7)  # values 4-6 are dead
    on_values = live.repeat(3, 1) + 1e-6 * torch.randn(12, 8)  # tasks that sit on their values
    far = torch.randn(2, 8) * 3
    flat = torch.cat([on_values, far, far[:1]])  # a far encoding twice
    assert len(revival_picks(on_values, centers, dead)) == 0  # a revived value would be a copy
    picks = revival_picks(flat, centers, dead)
    # each far encoding once (the repeat is served by the first pick), none of the served
    assert sorted(flat[picks].tolist()) == sorted(far.tolist())
    # drawn in proportion to the squared distance from the nearest value in use
    near_far = torch.cat([live + 0.1, live[:1] + 1.0])  # four near encodings, one 10x farther
    draws = torch.cat([revival_picks(near_far, centers, dead[:1]) for _ in range(400)])
    counts = torch.bincount(draws, minlength=5)
    assert counts[4] > 0.8 * 400 > counts[:4].sum()
    # a dead value that still sits nearest to encodings serves none of them
    assert len(revival_picks(centers[4:5] + 1e-6, centers, dead)) == 1


def test_a_start_with_every_task_on_a_value_revives_no_copy_of_one():
    """A spread start puts every task exactly on a value (a grouped one too, several tasks
    on one): reviving a dead value on a task's encoding would give the task two equal
    values, and rounding would pick between them."""
    model = make("ema", quantize_all_tasks=True, dead_code_threshold=0.995, encoder_init="spread").train()
    q = model.quantizer
    q.defer_usage = True
    model(**one_task_batch(0))
    z = model.encode_tasks(torch.arange(len(NAMES))).detach().reshape(-1, q.dim)
    dead = q.vq._codebook.cluster_size[0] * 0.8 < 0.995  # unused now: dead after this step
    assert (torch.cdist(z, q.centers).min(1).values < 1e-4).all() and dead.any()
    q.end_step(seed=0)
    gaps = torch.cdist(q.centers, q.centers) + torch.eye(16) * 1e9
    assert gaps.min() > 1e-3  # no value is a copy of another


def test_a_value_in_use_is_neither_moved_nor_copied_however_low_its_usage():
    """Usage under the threshold is not enough to revive a value: an encoding must not pick
    it (an EMA count can stay just under the threshold while one task sits on the value)."""
    model = make(quantize_all_tasks=True, dead_code_threshold=0.995).train()
    q = model.quantizer
    q.defer_usage = True
    q.usage.zero_()  # every value under the threshold, those in use too
    before = q.codebook.detach().clone()
    z = model.encode_tasks(torch.arange(len(NAMES))).detach().reshape(-1, q.dim)
    used = torch.cdist(z, before).argmin(-1).unique()
    model(**one_task_batch(0))
    q.end_step(seed=0)
    assert torch.equal(q.codebook[used], before[used])
    assert 0 < q.revived <= 16 - len(used)
    gaps = torch.cdist(q.codebook, q.codebook) + torch.eye(16) * 1e9
    assert gaps.min() > 1e-3


def test_rotation_trick_forward_is_the_codebook_and_gradient_is_rotated():
    st, rot = make(), make(rotation_trick=True)
    for m in (st, rot):
        m.quantizer.train()
    z = torch.randn(4, 3, st.quantizer.dim, requires_grad=True)
    w = torch.randn_like(z)
    grads = []
    for m in (st, rot):
        out = m.quantizer(z)
        assert torch.allclose(out.quantized, m.quantizer.codebook[out.codes].detach(), atol=1e-5)
        z.grad = None
        (out.quantized * w).sum().backward()
        grads.append(z.grad.clone())
    assert torch.equal(grads[0], w)  # straight through
    zz = z.detach().clone().requires_grad_()
    q = rot.quantizer.codebook.detach()[rot.quantizer.nearest(zz)]
    (rotate_to(zz, q) * w).sum().backward()
    assert torch.allclose(grads[1], zz.grad, atol=1e-6) and not torch.allclose(grads[1], w)


def test_usage_entropy_term_is_minus_the_entropy_and_spreads_the_encodings():
    torch.manual_seed(0)
    book = torch.randn(8, 4)
    z = (book[0] + 0.01 * torch.randn(20, 2, 4)).requires_grad_()  # every encoding on value 0
    p = (-torch.cdist(z.detach(), book[None].expand(20, -1, -1))).softmax(-1).mean(0)
    assert torch.allclose(usage_entropy_loss(z, book, 1.0), (p * p.log()).sum(-1).mean(), atol=1e-6)
    opt = torch.optim.SGD([z], lr=5.0)
    start = usage_entropy_loss(z, book, 1.0).item()
    for _ in range(100):
        opt.zero_grad()
        usage_entropy_loss(z, book, 1.0).backward()
        opt.step()
    nearest = torch.cdist(z.detach().reshape(-1, 4), book).argmin(-1)
    assert usage_entropy_loss(z, book, 1.0).item() < start and nearest.unique().numel() > 3


def test_codebook_warm_up_decodes_the_encodings_and_kmeans_sets_the_codebook():
    model = make(quantize_all_tasks=True).train()
    q = model.quantizer
    q.quantizing = False
    prompt, codes, vq = model.soft_prompt(1, task_ids=torch.tensor([2]))
    z = model.encode_tasks(torch.tensor([2]))
    assert torch.allclose(prompt, model.decoder(z)) and float(vq) == 0.0
    prompt.sum().backward()
    assert q.codebook.grad is None and model.task_embedding.weight.grad[2].abs().sum() > 0
    allz = model.encode_tasks(torch.arange(len(NAMES))).detach().reshape(-1, q.dim)
    before = torch.cdist(allz, q.codebook.detach()).min(-1).values
    model.kmeans_init(seed=0)
    after = torch.cdist(allz, q.codebook.detach()).min(-1).values
    assert after.pow(2).sum() < 0.5 * before.pow(2).sum() and (after < 1e-4).sum() >= 5


def drifting_groups(step: int, generator: torch.Generator) -> torch.Tensor:
    """Encodings [12 tasks, 4 positions, 8 dims] in 3 groups of 4 tasks: positions 0-1 carry
    the group (tasks of a group share a point), positions 2-3 the task; every encoding
    drifts along one common direction, 0.2 a step (what stage 1 does to the encodings when
    the LM gradient pulls every task the same way)."""
    g = torch.Generator().manual_seed(7)
    group = torch.randn(3, 2, 8, generator=g) * 3
    task = torch.randn(12, 2, 8, generator=g) * 3
    z = torch.cat([group.repeat_interleave(4, 0), task], 1)
    drift = torch.ones(8) * 0.2 * step
    return z + drift + 0.01 * torch.randn(12, 4, 8, generator=generator)


@pytest.mark.parametrize("updated", [True, False])
def test_stable_codebook_keeps_one_code_per_task_and_shares_values_in_groups(updated):
    """40 steps of drifting grouped encodings through the stable quantizer (EMA step and
    revival once a step from every task); without the step the codebook stays behind and
    the tasks fall onto a few values."""
    names = [f"t{i}" for i in range(12)]
    torch.manual_seed(0)
    cfg = CTRConfig(code_length=4, codebook_size=16, task_names=names, codebook_init_scale=1.0,
                    quantizer="ema", quantize_all_tasks=True, dead_code_threshold=0.5)
    q = CTRModel(tiny_backbone("llama", hidden=8)[0], cfg).quantizer.train()
    q.defer_usage = True
    rng = torch.Generator().manual_seed(0)
    for step in range(40):
        q(drifting_groups(step, rng), complete=True)
        if updated:
            q.end_step(seed=step)
    codes = q.nearest(drifting_groups(40, rng))
    distinct = len({tuple(c) for c in codes.tolist()})
    same_group = all(len(set(codes[4 * g:4 * g + 4, i].tolist())) == 1 for g in range(3) for i in (0, 1))
    if updated:  # one code per task, one value per group at the group positions
        assert distinct == 12 and same_group
    else:
        assert distinct < 12


def test_value_offsets_shape_the_prompt_but_not_the_codes():
    model = make("ema", quantize_all_tasks=True, value_offsets=True, dead_code_threshold=0.995).train()
    q = model.quantizer
    q.defer_usage = True
    z = model.encode_tasks(torch.arange(len(NAMES))).detach()
    codes = q.nearest(z)
    with torch.no_grad():
        q.offsets.normal_()  # offsets move the prompt vectors far, not the codes
    assert torch.equal(q.nearest(z), codes)
    out = q(z.clone().requires_grad_(), complete=True)
    assert torch.allclose(out.quantized, q.centers[codes] + q.offsets[codes].detach(), atol=1e-5)
    w = torch.randn_like(out.quantized)
    (out.quantized * w).sum().backward()
    want = torch.zeros_like(q.offsets).index_add_(0, codes.flatten(), w.reshape(-1, q.dim))
    assert torch.allclose(q.offsets.grad, want, atol=1e-5)  # the LM gradient of every row using it
    q.end_step(seed=0)
    dead = [v for v in range(16) if v not in codes.flatten().tolist()]
    assert q.revived == len(dead) > 0
    assert (q.offsets.detach()[dead] == 0).all() and (q.offsets.detach()[codes.flatten()] != 0).all()
    with pytest.raises(ValueError, match="value_offsets needs quantizer='ema'"):
        CTRConfig(value_offsets=True)
