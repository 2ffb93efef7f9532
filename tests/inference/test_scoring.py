"""Rank classification: equals brute force, invariant to batching, padding and mixing codes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctr.config import CTRConfig
from ctr.core.model import CTRModel
from ctr.inference.scoring import RankScorer, ScoreRequest
from ctr.core.testing import tiny_backbone

ARCHS = ["llama", "t5"]


def model_for(arch: str, use_codes: bool = True) -> CTRModel:
    backbone, tok = tiny_backbone(arch)
    cfg = CTRConfig(code_length=3, codebook_size=8, task_names=["a"], codebook_init_scale=1.0,
                    use_codes=use_codes)
    torch.manual_seed(0)
    return CTRModel(backbone, cfg, tok).eval()


def requests(arch: str, with_codes: bool = True) -> list[ScoreRequest]:
    g = torch.Generator().manual_seed(0)
    eos = [1] if arch == "t5" else []
    out = []
    for n, k in [(5, 2), (9, 3), (3, 4), (12, 2), (1, 3), (7, 2)]:
        choices = [torch.randint(4, 100, (int(torch.randint(1, 4, (1,), generator=g)),),
                                 generator=g).tolist() + eos for _ in range(k)]
        code = torch.randint(0, 8, (3,), generator=g).tolist() if with_codes else None
        out.append(ScoreRequest(torch.randint(4, 100, (n,), generator=g).tolist(), choices, code))
    return out


def close(a, b) -> bool:
    """Per-token scores to 1e-5; sums of ~20 tokens near -70 carry float32 rounding of
    a few 1e-6 relative, hence rel=1e-6 on the sums."""
    return (a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-5)
            and a.logprob == pytest.approx(b.logprob, rel=1e-6, abs=1e-5))


def brute_force(model: CTRModel, r: ScoreRequest) -> list[float]:
    """One full forward per choice with full-vocabulary logits."""
    out = []
    for c in r.choices:
        if model.config.use_codes:
            kw = {"codes": torch.tensor([r.code])}
        else:
            kw = {}
        if model.seq2seq:
            o = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([c]),
                      return_logits=True, **kw)
            logits = o.logits[0]
        else:
            ids = torch.tensor([r.input_ids + c])
            o = model(input_ids=ids, return_logits=True, **kw)
            logits = o.logits[0, len(r.input_ids) - 1:-1]
        lp = F.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None]).sum()
        out.append(lp.item())
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("use_codes", [True, False])
def test_scores_equal_brute_force(arch, use_codes):
    model = model_for(arch, use_codes)
    reqs = requests(arch, use_codes)
    scores = RankScorer(model, batch_size=4, progress=False).score(reqs)
    for r, s in zip(reqs, scores):
        ref = brute_force(model, r)
        assert s.logprob == pytest.approx(ref, abs=1e-4)
        assert s.prediction() == max(range(len(ref)), key=ref.__getitem__)
        assert s.tokens == [len(c) for c in r.choices]


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_do_not_depend_on_batch_size(arch):
    model = model_for(arch)
    reqs = requests(arch)
    base = RankScorer(model, batch_size=1, progress=False).score(reqs)
    for bs in (2, 3, 64):
        other = RankScorer(model, batch_size=bs, progress=False).score(reqs)
        for a, b in zip(base, other):
            assert close(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_code_batch_equals_rows_alone(arch):
    model = model_for(arch)
    reqs = requests(arch)
    together = RankScorer(model, batch_size=64, progress=False).score(reqs)
    for r, t in zip(reqs, together):
        alone = RankScorer(model, batch_size=1, progress=False).score([r])[0]
        assert close(alone, t)
    changed = [ScoreRequest(r.input_ids, r.choices, [(c + 1) % 8 for c in r.code]) for r in reqs]
    other = RankScorer(model, batch_size=64, progress=False).score(changed)
    assert any(abs(a - b) > 1e-4 for x, y in zip(together, other) for a, b in zip(x.logprob, y.logprob))


def test_scorer_needs_codes_for_a_ctr_model():
    model = model_for("llama")
    r = requests("llama", with_codes=False)
    with pytest.raises(ValueError, match="needs a code"):
        RankScorer(model, progress=False).score(r)
    with pytest.raises(ValueError, match="shape"):
        RankScorer(model, progress=False).score([ScoreRequest([5, 6], [[7]], [1, 2])])


def test_out_of_memory_halves_the_batch_and_keeps_results(monkeypatch):
    model = model_for("llama")
    reqs = requests("llama")
    ref = RankScorer(model, batch_size=1, progress=False).score(reqs)
    scorer = RankScorer(model, batch_size=8, progress=False)
    real = scorer._score_batch

    def flaky(batch):
        if len(batch) > 2:
            raise torch.OutOfMemoryError("simulated")
        return real(batch)
    monkeypatch.setattr(scorer, "_score_batch", flaky)
    got = scorer.score(reqs)
    assert scorer.batch_size == 2
    for a, b in zip(ref, got):
        assert close(a, b)
