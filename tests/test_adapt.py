"""Zero-label Code Ensemble, Bitwise Search, shots and the prompt-tuning baseline."""
from __future__ import annotations

import json
from collections import Counter
from types import MappingProxyType

import pytest
import torch

from ctr.bitwise_search import Shot, ShotObjective, bitwise_search, reference_search
from ctr.config import CTRConfig
from ctr.data import data_dir
from ctr.evaluate import EvalConfig, evaluate
from ctr.modeling import CTRModel
from ctr.prompt_tuning import tune_prompt
from ctr.scoring import RankScorer, ScoreRequest
from ctr.testing import tiny_backbone

L, K = 4, 8


def ctr_model(arch="llama", n_tasks=3) -> CTRModel:
    backbone, tok = tiny_backbone(arch)
    torch.manual_seed(0)
    cfg = CTRConfig(code_length=L, codebook_size=K, task_names=[f"t{i}" for i in range(n_tasks)],
                    codebook_init_scale=1.0)
    return CTRModel(backbone, cfg, tok).eval()


def need_data():
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"held-out data not available: {e}")


# ---- Bitwise Search on objectives known by construction ------------------------------
TARGET = [3, 7, 0, 5]


def hamming(codes):
    return [float(sum(a != b for a, b in zip(c, TARGET))) for c in codes]


def test_search_finds_the_code_known_by_construction():
    starts = [[1, 1, 1, 1], [2, 2, 2, 2]]
    res = bitwise_search(hamming, starts, [list(range(K))] * L, seed=3)
    assert res.code == TARGET and res.objective == 0.0
    assert res.start_objective == 4.0


def test_search_only_accepts_strict_improvements():
    table = torch.rand(*(K,) * L, generator=torch.Generator().manual_seed(0))
    noisy = lambda codes: [float(table[tuple(c)]) for c in codes]
    res = bitwise_search(noisy, [[0, 1, 2, 3], [4, 4, 4, 4]], [list(range(K))] * L, seed=1)
    prev = res.start_objective
    for rec in res.trajectory[1:]:
        if rec["accepted"]:
            assert rec["objective"] < prev
        else:
            assert rec["objective"] == prev and rec.get("best_objective", prev + 1) >= prev
        prev = rec["objective"]
    assert res.objective <= res.start_objective
    assert res.objective == float(table[tuple(res.code)])
    # a local optimum: no single-position change improves it
    for p in range(L):
        for v in range(K):
            c = list(res.code)
            c[p] = v
            assert noisy([c])[0] >= res.objective


def test_batched_and_one_at_a_time_searches_agree():
    table = torch.rand(*(K,) * L, generator=torch.Generator().manual_seed(5))
    f = lambda codes: [float(table[tuple(c)]) for c in codes]
    starts = [[0, 0, 0, 0], [1, 2, 3, 4]]
    a = bitwise_search(f, starts, [list(range(K))] * L, seed=2)
    b = reference_search(f, starts, [list(range(K))] * L, seed=2)
    assert a.code == b.code and a.evaluations == b.evaluations


def test_interrupted_search_resumes_the_same_trajectory(tmp_path):
    table = torch.rand(*(K,) * L, generator=torch.Generator().manual_seed(7))
    f = lambda codes: [float(table[tuple(c)]) for c in codes]
    starts = [[0, 0, 0, 0], [5, 5, 5, 5]]
    full = bitwise_search(f, starts, [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "full.jsonl")
    calls = {"n": 0}

    def dies(codes):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return f(codes)
    with pytest.raises(KeyboardInterrupt):
        bitwise_search(dies, starts, [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "cut.jsonl")
    assert len((tmp_path / "cut.jsonl").read_text().splitlines()) == 3  # start + 2 positions
    resumed = bitwise_search(f, starts, [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "cut.jsonl")
    assert resumed.code == full.code and resumed.objective == full.objective
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "time"}
                       for x in p.read_text().splitlines()]
    assert strip(tmp_path / "cut.jsonl") == strip(tmp_path / "full.jsonl")
    with pytest.raises(ValueError, match="other start codes"):
        bitwise_search(f, [[1, 1, 1, 1]], [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "cut.jsonl")


def test_shot_objective_batches_codes_and_matches_single_scoring():
    model = ctr_model()
    shots = [Shot([5, 6, 7], [[20, 21], [22]], 0), Shot([8, 9], [[23], [24, 25]], 1)]
    obj = ShotObjective(RankScorer(model, 4, progress=False), shots)
    codes = [[0, 1, 2, 3], [4, 5, 6, 7], [7, 7, 7, 7]]
    batched = obj(codes)
    for c, v in zip(codes, batched):
        ref = 0.0
        for s in shots:
            sc = RankScorer(model, 1, progress=False).score([ScoreRequest(s.input_ids, s.choices, c)])[0]
            ref -= sc.logprob[s.label]
        assert v == pytest.approx(ref, abs=1e-4)
    acc = ShotObjective(RankScorer(model, 4, progress=False), shots, "accuracy")(codes)
    assert all(0 <= a <= len(shots) + 1 for a in acc)


def test_search_on_a_real_model_never_ends_above_its_start():
    model = ctr_model()
    shots = [Shot([5 + i, 6, 7], [[20, 21], [22]], i % 2) for i in range(4)]
    obj = ShotObjective(RankScorer(model, 8, progress=False), shots)
    table = model.code_table()
    res = bitwise_search(obj, list(table.values()), [list(range(K))] * L, max_sweeps=2, seed=0)
    assert res.objective <= res.start_objective
    assert res.objective == pytest.approx(obj([res.code])[0], abs=1e-4)


# ---- shots, splits and the zero-label path on the real data ---------------------------
def test_few_shot_shots_are_balanced_seeded_and_disjoint_from_eval():
    need_data()
    from ctr.splits import few_shot
    s = few_shot("super_glue_rte", 8, seed=1)
    assert s.source == "train" and s.exclude == []
    assert Counter(e.label for e in s.examples) == Counter({0: 4, 1: 4})
    assert [e.index for e in few_shot("super_glue_rte", 8, seed=1).examples] == [e.index for e in s.examples]
    sc = few_shot("story_cloze_2016", 6, seed=0)
    assert sc.source.startswith("eval") and sorted(sc.exclude) == sorted(e.index for e in sc.examples)


class _NoLabels(dict):
    """A label mapping that fails on any access."""

    def _boom(self, *a, **k):
        raise AssertionError("a label was read")
    __getitem__ = __iter__ = __len__ = get = items = keys = values = __contains__ = _boom


@pytest.mark.parametrize("task", ["super_glue_rte", "anli_r1"])
def test_zero_label_selection_never_reads_labels(task, monkeypatch):
    need_data()
    import ctr.splits as splits
    from ctr.eval_tasks import TaskExample
    from ctr.zero_label import ZeroLabelConfig, candidate_codes, select_code
    real = splits.load_examples

    def unlabeled(*a, **k):
        return [TaskExample(e.index, e.fields, MappingProxyType(_NoLabels()), e.label_field)
                for e in real(*a, **k)]
    monkeypatch.setattr(splits, "load_examples", unlabeled)
    model = ctr_model()
    cfg = ZeroLabelConfig(n_inputs=5, max_templates=2)
    sel = select_code(model, task, cfg, candidate_codes(model), RankScorer(model, 8, progress=False))
    assert len(sel["code"]) == L and 0 <= sel["agreement"] <= 1
    assert sel["ranked"][0]["agreement"] == max(r["agreement"] for r in sel["ranked"])
    assert sel["inputs"] == 10  # 5 inputs x 2 templates
    if task == "anli_r1":  # no train split: selection inputs come from validation...
        assert sel["exclude"] == sel["selection_indices"]
        monkeypatch.setattr(splits, "load_examples", real)
        excl = {task: sel["exclude"]}
        import tempfile, os
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(excl, f)
        res = evaluate(model, EvalConfig(tasks=[task], code=",".join(map(str, sel["code"])),
                                         templates=["GPT-3 style"], exclude_indices=f.name),
                       progress=False)
        os.unlink(f.name)
        evaluated = set(res["tasks"][task]["indices"])
        assert evaluated and not evaluated & set(sel["selection_indices"])  # ...and stay out of eval
    else:
        assert sel["selection_source"] == "train" and sel["exclude"] == []


def test_degenerate_candidates_are_dropped_from_predictions_alone():
    need_data()
    from ctr.zero_label import ZeroLabelConfig, candidate_codes, select_code
    model = ctr_model()
    cfg = ZeroLabelConfig(n_inputs=6, max_templates=1, degenerate_threshold=0.0)
    sel = select_code(model, "super_glue_rte", cfg, candidate_codes(model),
                      RankScorer(model, 8, progress=False))
    assert all(r["degenerate"] for r in sel["ranked"])  # threshold 0: every candidate is degenerate


# ---- prompt tuning --------------------------------------------------------------------
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


def train_tiny_run(run, tiny_paths, task_file):
    """A stage-1 run of the tiny llama on the small task file (codes L x K)."""
    from ctr.config import TrainConfig
    from ctr.trainer import train
    train(TrainConfig(output_dir=str(run), model=str(tiny_paths["llama"]), preset="tiny",
                      train_files=[str(task_file)], code_length=L, codebook_size=K, max_source_len=32))
    return run


def test_cli_zero_label_and_few_shot_end_to_end(tiny_paths, task_file, tmp_path, capsys):
    need_data()
    from ctr.cli import main
    run = train_tiny_run(tmp_path / "s1", tiny_paths, task_file)
    zl = tmp_path / "zl"
    assert main(["zero-label", "--checkpoint", str(run), "--tasks", "super_glue_cb", "anli_r2",
                 "--n-inputs", "4", "--max-templates", "1", "--max-examples", "5",
                 "--eval-max-templates", "2", "--output-dir", str(zl)]) == 0
    res = json.loads((zl / "results.json").read_text())
    sel = json.loads((zl / "zero_label.json").read_text())["tasks"]
    assert set(res["tasks"]) == {"super_glue_cb", "anli_r2"}
    assert not set(res["tasks"]["anli_r2"]["indices"]) & set(sel["anli_r2"]["selection_indices"])
    assert res["tasks"]["super_glue_cb"]["code"] == sel["super_glue_cb"]["code"]
    fs = tmp_path / "fs"
    assert main(["few-shot", "--checkpoint", str(run), "--tasks", "super_glue_cb", "--shots", "3",
                 "--max-templates", "1", "--max-sweeps", "1", "--values", "seen", "--max-examples", "5",
                 "--eval-max-templates", "1", "--prompt-tuning", "--prompt-steps", "2",
                 "--holdout", "0.34", "--output-dir", str(fs)]) == 0
    out = json.loads((fs / "results.json").read_text())
    assert set(out["runs"]) == {"bitwise", "discrete", "prompt_tuning"}
    adapted = out["adapted"]["super_glue_cb"]
    assert adapted["chosen_by"] == "held-out shots" and adapted["search_objective"] <= adapted["start_objective"]
    assert (fs / "trajectory_super_glue_cb.jsonl").exists()
    assert "prompt_tuning (median)" in (fs / "results.md").read_text()
    plain = tiny_paths["llama"]
    assert main(["few-shot", "--checkpoint", str(plain), "--tasks", "super_glue_cb"]) == 2
    assert "no codes" in capsys.readouterr().err
