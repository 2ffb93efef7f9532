"""The codebook proxy's table: what it reads from run folders and how it averages seeds."""
from __future__ import annotations

import json

import pytest

from ctr.core.code_health import HEALTH_FILE, codebook_health
from ctr.experiments.codebook_proxy import PROBE_STEPS, compile_table, markdown
from ctr.fileio import write_json


def fake_run(folder, steps, lm_loss, perplexity, codes):
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "lm_loss": lm_loss(s), "code_perplexity": perplexity(s),
                                "distinct_values": 5, "distinct_codes": 3, "largest_value_share": 0.4,
                                "type_gap": 0.1}) + "\n")
    write_json(folder / HEALTH_FILE, codebook_health(codes, 8, types=["a", "a", "b", "b"]).to_dict())
    (folder / "final").mkdir()


def test_the_table_averages_seeds_and_reads_the_last_tenth_of_the_loss(tmp_path):
    codes = [[0, 1], [0, 1], [2, 3], [4, 5]]
    fake_run(tmp_path / "prompt" / "seed0", 600, lambda s: 1.0 if s > 540 else 9.0,
             lambda s: [10.0, 20.0], codes)
    fake_run(tmp_path / "prompt" / "seed1", 600, lambda s: 3.0 if s > 540 else 9.0,
             lambda s: [30.0, 40.0], codes)
    fake_run(tmp_path / "stable" / "seed0", 300, lambda s: float(s), lambda s: [1.0, 1.0], codes)
    (tmp_path / "not_a_recipe" / "seed0").mkdir(parents=True)  # ignored
    table = compile_table(tmp_path)
    assert set(table["recipes"]) == {"prompt", "stable"}
    seeds = table["recipes"]["prompt"]["seeds"]
    # the mean LM loss of the steps after 90% of the run, not of the whole run
    assert seeds["seed0"]["lm_loss_last10"] == 1.0 and seeds["seed1"]["lm_loss_last10"] == 3.0
    assert table["recipes"]["stable"]["seeds"]["seed0"]["lm_loss_last10"] == pytest.approx(285.5)
    assert set(seeds["seed0"]["trajectory"]) == set(PROBE_STEPS)
    assert set(table["recipes"]["stable"]["seeds"]["seed0"]["trajectory"]) == {10, 100, 200, 300}
    text = markdown(table)
    # mean over the positions, then over the seeds: (15 + 35) / 2
    assert "| prompt | 600 | 25.0 |" in text
    # three distinct codes of four tasks; the same-type pair (a, a) shares both positions
    assert "| prompt | seed1 | 3 / 4 |" in text


def test_every_recipe_is_a_valid_stage_1_run(tmp_path):
    from ctr.config import TrainConfig
    from ctr.experiments.codebook_proxy import PROXY, RECIPES

    resolved = {name: TrainConfig.from_flags(output_dir=str(tmp_path / name), **{**PROXY, **options}).resolved()
                for name, options in RECIPES.items()}
    assert all(r.stage == 1 and r.steps == PROXY["steps"] for r in resolved.values())
    grouped, held = resolved["stable_grouped"], resolved["stable_grouped_held"]
    assert held.ctr == grouped.ctr and held.encoder_lr_scale == grouped.encoder_lr_scale
    assert held.task_embedding_lr_scale == 0.01 and grouped.task_embedding_lr_scale == 1.0
