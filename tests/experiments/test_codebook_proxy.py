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


def fake_scores(folder, task, selection_seed, right):
    """A zero-label (or eval) results.json of one task, two templates right on the same `right`
    examples of 200."""
    bits = "".join("1" if i in right else "0" for i in range(200))
    acc = 100 * len(right) / 200
    template = {"n": 200, "accuracy": acc, "indices": list(range(200)), "correct": bits}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", {"config": {"seed": selection_seed}, "tasks": {task: {
        "median": acc, "code": [selection_seed], "templates": {"a": template, "b": dict(template)}}}})


def test_zero_label_is_read_from_every_near_folder_paired_with_the_backbone(tmp_path):
    codes = [[0, 1], [0, 1], [2, 3], [4, 5]]
    run = tmp_path / "stable" / "seed0"
    fake_run(run, 10, lambda s: 1.0, lambda s: [5.0, 5.0], codes)
    fake_scores(tmp_path / "backbone", "trec", 0, set(range(100)))
    # selection seed 0: right where the backbone is and on 10 more examples
    fake_scores(run / "near_trec", "trec", 0, set(range(110)))
    fake_scores(run / "near_trec_sel2", "trec", 2, set(range(60)))
    fake_scores(run / "near", "glue_sst2", 0, set(range(50)))
    near = compile_table(tmp_path)["recipes"]["stable"]["seeds"]["seed0"]["near"]
    assert set(near) == {"trec", "glue_sst2"}
    trec = near["trec"]
    assert trec["selections"] == {"0": 55.0, "2": 30.0}
    assert trec["median"] == 55.0 and trec["code"] == [0]  # the lowest selection seed heads the row
    # paired over examples: the run is right wherever the backbone is, so no replicate can
    # put it below (drawn independently, the interval would reach well below zero)
    lo, hi = trec["vs_backbone"]["ci_low"], trec["vs_backbone"]["ci_high"]
    assert trec["vs_backbone"]["diff"] == 5.0 and 0 <= lo < 5.0 < hi
    assert "glue_sst2" in near and "vs_backbone" not in near["glue_sst2"]  # no backbone score for it
    text = markdown(compile_table(tmp_path))
    assert "| stable | seed0 |" in text
    assert "| stable seed0 | trec | 0: 55.0, 2: 30.0 | 42.5 | 30.0 | 50.0 |" in text
    # one task scored twice at one selection seed is an error that names the file
    fake_scores(run / "near_again", "trec", 2, set(range(70)))
    with pytest.raises(ValueError, match="near_trec_sel2.*selection seed 2|near_again.*selection seed 2"):
        compile_table(tmp_path)


def test_each_selection_seed_is_scored_once_into_its_own_folder(tmp_path, monkeypatch):
    import ctr.experiments.codebook_proxy as proxy

    calls = []
    monkeypatch.setattr(proxy, "run_eval", lambda cfg: calls.append(("eval", cfg.output_dir)))
    monkeypatch.setattr(proxy, "run_zero_label", lambda cfg: calls.append((cfg.output_dir, cfg.seed, cfg.tasks)))
    run = tmp_path / "stable" / "seed0"
    (run / "final").mkdir(parents=True)
    fake_scores(run / "near_trec_sel1", "trec", 1, set())  # scored before: kept
    proxy.score_near(tmp_path, ["stable"], [0], tasks=["trec"], selection_seeds=(0, 1, 2))
    assert calls == [("eval", str(tmp_path / "backbone")),
                     (str(run / "near_trec"), 0, ["trec"]), (str(run / "near_trec_sel2"), 2, ["trec"])]
