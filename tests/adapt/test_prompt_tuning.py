"""The prompt-tuning baseline."""
from __future__ import annotations


import pytest
import torch

from ctr.adapt.bitwise_search import Shot, ShotObjective
from ctr.adapt.prompt_tuning import tune_prompt
from ctr.inference.scoring import RankScorer, ScoreRequest

from adapt_support import ctr_model  # tests/adapt is on sys.path under pytest

L, K = 4, 8


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_prompt_tuning_lowers_shot_loss_and_leaves_the_model_alone(arch):
    model = ctr_model(arch)
    eos = [1] if arch == "t5" else []
    shots = [Shot([5 + i, 6, 7] + eos, [[20 + i % 2, 21] + eos, [30] + eos], 0) for i in range(4)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = [0, 1, 2, 3]
    prompt = tune_prompt(model, shots, L, steps=30, lr=1e-1, init_code=start)
    assert prompt.shape == (L, model.backbone.get_input_embeddings().embedding_dim)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    obj_code = ShotObjective(RankScorer(model, 8, progress=False), shots)([start])[0]
    tuned = RankScorer(model, 8, progress=False, prompt=prompt).score(
        [ScoreRequest(s.input_ids, [s.choices[s.label]]) for s in shots])
    assert -sum(t.logprob[0] for t in tuned) < obj_code


