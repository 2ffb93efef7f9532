"""The codes training tasks start on (`ctr.core.code_init`, `CTRConfig.encoder_init`):
spread codes use every value evenly; grouped codes share values inside groups of similar
tasks, give every task a code of its own, and the model starts each task exactly on it."""
from __future__ import annotations

import pytest
import torch

from ctr.config import CTRConfig
from ctr.core.code_health import codebook_health
from ctr.core.code_init import grouped_codes, spread_codes
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone


def grouped_profiles(groups: int = 3, per_group: int = 6, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Profiles [groups * per_group, dim]: tasks of a group close together, groups far apart."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, dim, generator=g) * 5
    return centres.repeat_interleave(per_group, 0) + 0.1 * torch.randn(groups * per_group, dim, generator=g)


def test_spread_codes_use_every_value_evenly():
    torch.manual_seed(0)
    codes = spread_codes(24, 4, 8)
    counts = torch.bincount(codes.flatten(), minlength=8)
    assert codes.shape == (24, 4) and counts.min() >= 1
    assert counts.max() <= 24 * 4 // 8 + 1  # no value more than once over its even share


def test_grouped_codes_share_values_inside_groups_and_keep_one_code_per_task():
    torch.manual_seed(0)
    profiles = grouped_profiles()
    codes = grouped_codes(profiles, code_length=5, codebook_size=32, groups=3)
    group = torch.arange(18) // 6
    health = codebook_health(codes.tolist(), 32, group.tolist())
    assert health.distinct_codes == 18  # every task on a code of its own
    # tasks of a group start on one code and each repeat moves one position to a value of its
    # own (6 tasks on 5 positions: they still share most positions); other groups share none
    assert health.same_type_similarity > 0.55 and health.different_type_similarity < 0.1
    torch.manual_seed(0)
    assert torch.equal(grouped_codes(profiles, 5, 32, groups=3), codes)  # seeded: the same draw


def test_grouped_codes_of_unrelated_tasks_carry_no_structure():
    """Random profiles give random groups: no more shared inside the 'groups' than across."""
    torch.manual_seed(0)
    codes = grouped_codes(torch.randn(60, 16), code_length=8, codebook_size=64)
    health = codebook_health(codes.tolist(), 64, (torch.arange(60) // 20).tolist())
    assert health.distinct_codes == 60 and abs(health.type_gap) < 0.05


@pytest.mark.parametrize("profiles", [True, False])
def test_model_starts_every_task_exactly_on_its_grouped_code(profiles):
    backbone, tok = tiny_backbone(hidden=32)
    cfg = CTRConfig(task_names=[f"t{i}" for i in range(18)], code_length=4, codebook_size=16,
                    codebook_init="vocab", decoder_init="identity", encoder_init="grouped")
    torch.manual_seed(1)
    model = CTRModel(backbone, cfg, tok, task_profiles=grouped_profiles() if profiles else None)
    codes = model.task_codes()
    ids = torch.arange(18)
    z = model.encode_tasks(ids)
    assert torch.allclose(z, model.quantizer.lookup(codes), atol=1e-4)  # VQ loss 0 at the start
    assert len({tuple(c) for c in codes.tolist()}) == 18
    same = (codes[:, None, :] == codes[None, :, :]).float().mean(-1)
    in_group = (ids[:, None] // 6 == ids[None, :] // 6) & (ids[:, None] != ids[None, :])
    gap = same[in_group].mean() - same[~in_group & (ids[:, None] // 6 != ids[None, :] // 6)].mean()
    if profiles:
        assert gap > 0.4
    else:  # a model about to load its weights: spread codes, no groups
        assert abs(gap) < 0.2


def test_grouped_init_needs_a_profile_per_task():
    backbone, tok = tiny_backbone(hidden=32)
    cfg = CTRConfig(task_names=["a", "b", "c"], code_length=2, codebook_size=8, encoder_init="grouped")
    with pytest.raises(ValueError, match="task_profiles has 2 rows for 3 tasks"):
        CTRModel(backbone, cfg, tok, task_profiles=torch.randn(2, 8))
