"""Zero-label Code Ensemble, Bitwise Search, shots and the prompt-tuning baseline."""
from __future__ import annotations

import json
from collections import Counter
from types import MappingProxyType

import pytest
import torch

from ctr.adapt.bitwise_search import Shot, ShotObjective, bitwise_search, reference_search
from ctr.config import CTRConfig
from ctr.tasks.mixture import data_dir
from ctr.inference.evaluate import EvalConfig, evaluate
from ctr.core.model import CTRModel
from ctr.adapt.prompt_tuning import tune_prompt
from ctr.inference.scoring import RankScorer, ScoreRequest
from ctr.core.testing import tiny_backbone

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
    starts = [[0, 1, 2, 3], [4, 4, 4, 4]]
    assert res.start_code == min(starts, key=lambda c: noisy([c])[0])  # the better start is taken
    assert res.start_objective == noisy([res.start_code])[0]
    assert res.objective == float(table[tuple(res.code)])
    # a local optimum: no single-position change improves it
    for p in range(L):
        for v in range(K):
            c = list(res.code)
            c[p] = v
            assert noisy([c])[0] >= res.objective


@pytest.mark.parametrize("restricted", [False, True])
def test_search_equals_brute_force_on_a_separable_objective(restricted):
    """On an objective that is a sum over positions, coordinate search is exact: on a
    small space its result must be the brute-force optimum (over the allowed values),
    reached in one sweep and confirmed by a second."""
    import itertools
    k, length = 5, 3
    cost = torch.rand(length, k, generator=torch.Generator().manual_seed(11))
    f = lambda codes: [float(sum(cost[p, v] for p, v in enumerate(c))) for c in codes]
    values = [[0, 2, 4], [1, 3], [0, 1, 2, 3, 4]] if restricted else [list(range(k))] * length
    space = [list(c) for c in itertools.product(*values)]
    best = min(space, key=lambda c: f([c])[0])
    starts = [[4, 3, 4], [0, 1, 2]]
    assert best not in starts
    res = bitwise_search(f, starts, values, seed=0)
    assert res.code == best and res.objective == pytest.approx(f([best])[0])
    assert res.start_code == min(starts, key=lambda c: f([c])[0])
    tried = sum(len(v) - 1 for v in values)  # every other allowed value of each position
    assert res.sweeps == 2 and res.evaluations == len(starts) + 2 * tried


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
    # other start codes: the stale trajectory is replaced by a fresh search (tests/test_resume_safety.py)
    other = bitwise_search(f, [[1, 1, 1, 1]], [list(range(K))] * L, seed=4, trajectory_path=tmp_path / "cut.jsonl")
    assert other.code == bitwise_search(f, [[1, 1, 1, 1]], [list(range(K))] * L, seed=4).code


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
    for c, a, loss in zip(codes, acc, batched):
        single = [RankScorer(model, 1, progress=False).score([ScoreRequest(s.input_ids, s.choices, c)])[0]
                  for s in shots]
        errors = sum(sc.prediction() != s.label for sc, s in zip(single, shots))
        full_loss = -sum(sc.logprob[s.label] for sc, s in zip(single, shots))
        assert full_loss == pytest.approx(loss, abs=1e-4)
        assert a == pytest.approx(errors + full_loss / (1e6 * len(shots)), abs=1e-9)


def test_search_on_a_real_model_ends_in_a_local_optimum_from_the_best_start():
    model = ctr_model()
    shots = [Shot([5 + i, 6, 7], [[20, 21], [22]], i % 2) for i in range(4)]
    obj = ShotObjective(RankScorer(model, 8, progress=False), shots)
    starts = list(model.code_table().values())
    res = bitwise_search(obj, starts, [list(range(K))] * L, max_sweeps=20, seed=0)
    assert res.start_objective == pytest.approx(min(obj(starts)), abs=1e-4)
    assert res.objective == pytest.approx(obj([res.code])[0], abs=1e-4)
    accepted = [r for r in res.trajectory[1:] if r["accepted"]]
    assert accepted, "the random model's start code should be improvable"
    objs = [res.start_objective] + [r["objective"] for r in accepted]
    assert all(b < a for a, b in zip(objs, objs[1:])) and objs[-1] == res.objective
    for r in accepted:  # each accepted step is the best value at its position, scored right
        assert r["objective"] == r["best_objective"] == pytest.approx(obj([r["code"]])[0], abs=1e-4)
    assert res.sweeps < 20  # converged: its last sweep changed nothing...
    neighbours = [res.code[:p] + [v] + res.code[p + 1:] for p in range(L) for v in range(K)
                  if v != res.code[p]]
    assert min(obj(neighbours)) >= res.objective - 1e-4  # ...so no one-position change helps


# ---- shots, splits and the zero-label path on the real data ---------------------------
def test_few_shot_shots_are_balanced_seeded_and_disjoint_from_eval():
    need_data()
    from ctr.tasks.splits import few_shot
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
def test_zero_label_selection_never_reads_labels(task, monkeypatch, tmp_path):
    need_data()
    data = str(small_data_dir(tmp_path / "data", {task: 40}))  # small enough to evaluate whole
    import ctr.tasks.splits as splits
    from ctr.tasks.registry import TaskExample
    from ctr.adapt.code_ensemble import select_code
    from ctr.adapt.common import candidate_codes
    from ctr.adapt.zero_label import ZeroLabelConfig
    real = splits.load_examples

    def unlabeled(*a, **k):
        return [TaskExample(e.index, e.fields, MappingProxyType(_NoLabels()), e.label_field)
                for e in real(*a, **k)]
    monkeypatch.setattr(splits, "load_examples", unlabeled)
    model = ctr_model()
    cfg = ZeroLabelConfig(n_inputs=5, max_templates=2, data_dir=data)
    sel = select_code(model, task, cfg, candidate_codes(model), RankScorer(model, 8, progress=False))
    assert sel["code"] == sel["ranked"][0]["code"] and sel["agreement"] == sel["ranked"][0]["agreement"]
    assert sel["ranked"][0]["agreement"] == max(r["agreement"] for r in sel["ranked"])
    for r in sel["ranked"]:  # agreement: a count of the 10 (input, template) prompts
        assert r["agreement"] * 10 == pytest.approx(round(r["agreement"] * 10))
    assert sel["inputs"] == 10  # 5 inputs x 2 templates
    if task == "anli_r1":  # no train split: selection inputs come from validation...
        assert sel["exclude"] == sel["selection_indices"]
        monkeypatch.setattr(splits, "load_examples", real)
        excl = {task: sel["exclude"]}
        import tempfile, os
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(excl, f)
        res = evaluate(model, EvalConfig(tasks=[task], code=",".join(map(str, sel["code"])),
                                         templates=["GPT-3 style"], exclude_indices=f.name,
                                         data_dir=data),
                       progress=False)
        os.unlink(f.name)
        evaluated = set(res["tasks"][task]["indices"])
        assert evaluated and not evaluated & set(sel["selection_indices"])  # ...and stay out of eval
    else:
        assert sel["selection_source"] == "train" and sel["exclude"] == []


class _ScriptedScorer:
    """Predictions scripted per code: the k-th prompt scored under code c gets choice
    script[c][k] (select_code scores code by code, prompts in one order)."""

    def __init__(self, script):
        self.script = {tuple(c): p for c, p in script.items()}

    def score(self, reqs):
        from ctr.inference.scoring import ChoiceScores
        seen = Counter()
        out = []
        for r in reqs:
            c = tuple(r.code)
            pred = self.script[c][seen[c]]
            seen[c] += 1
            out.append(ChoiceScores([0.0 if j == pred else -5.0 for j in range(len(r.choices))],
                                    [1] * len(r.choices)))
        return out


# Three candidates that answer "0" to everything outvote three informative ones.
_DEGENERATE = {(0, 0, 0, 0): [0] * 6, (1, 1, 1, 1): [0] * 6, (2, 2, 2, 2): [0] * 6}
_INFORMATIVE = {(3, 3, 3, 3): [0, 1, 0, 1, 1, 0],   # = the informative majority
                (4, 4, 4, 4): [0, 1, 1, 1, 1, 0],   # 5/6 of it
                (5, 5, 5, 5): [1, 1, 0, 1, 0, 0]}   # 4/6 of it


def test_degenerate_candidates_are_dropped_from_predictions_alone():
    """Scripted predictions: without the threshold the one-answer candidates set the
    pseudo-labels and win; above it they neither vote nor win, and the agreements are
    the exact counts against the informative majority."""
    need_data()
    from ctr.adapt.code_ensemble import select_code
    from ctr.adapt.zero_label import ZeroLabelConfig
    model = ctr_model()
    script = {**_DEGENERATE, **_INFORMATIVE}
    candidates = [(list(c), [f"task{i}"]) for i, c in enumerate(script)]

    def select(threshold):
        cfg = ZeroLabelConfig(n_inputs=6, max_templates=1, degenerate_threshold=threshold)
        sel = select_code(model, "super_glue_rte", cfg, candidates, _ScriptedScorer(script))
        assert sel["inputs"] == 6
        return sel, {tuple(r["code"]): r for r in sel["ranked"]}
    sel, ranked = select(None)
    assert tuple(sel["code"]) in _DEGENERATE and sel["agreement"] == 1.0  # pseudo-labels: all 0
    assert not any(r["degenerate"] for r in ranked.values())
    sel, ranked = select(0.9)
    assert sel["code"] == [3, 3, 3, 3] and sel["agreement"] == 1.0
    assert {c for c, r in ranked.items() if r["degenerate"]} == set(_DEGENERATE)
    assert {c: r["majority_share"] for c, r in ranked.items()} == pytest.approx(
        {**{c: 1.0 for c in _DEGENERATE}, (3, 3, 3, 3): 0.5, (4, 4, 4, 4): 4 / 6, (5, 5, 5, 5): 0.5})
    assert {c: r["agreement"] for c, r in ranked.items()} == pytest.approx(
        {**{c: 0.5 for c in _DEGENERATE}, (3, 3, 3, 3): 1.0, (4, 4, 4, 4): 5 / 6, (5, 5, 5, 5): 4 / 6})
    assert [tuple(r["code"]) for r in sel["ranked"][3:]] == list(_DEGENERATE)  # degenerate last


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


def test_few_shot_table_is_computed_from_the_runs():
    from ctr.adapt.few_shot import few_shot_table

    def run(medians):
        return {"tasks": {t: {"median": m} for t, m in medians.items()}}
    runs = {"bitwise": run({"super_glue_cb": 70.0, "trec": 41.25}),
            "discrete": run({"super_glue_cb": 50.0, "trec": 30.0})}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in few_shot_table(runs).splitlines()[2:]}
    assert rows["super_glue_cb"] == ["super_glue_cb", "70.0", "50.0", "78.6"]  # + paper few-shot
    assert rows["trec"] == ["trec", "41.2", "30.0", "-"]  # no paper number
    assert rows["**average**"] == ["**average**", "55.6", "40.0", "78.6"]
    runs["discrete"]["tasks"]["trec"]["median"] = 10.0
    rows = {line.split("|")[1].strip(): line for line in few_shot_table(runs).splitlines()[2:]}
    assert "| 10.0 |" in rows["trec"] and "| 30.0 |" in rows["**average**"]


def train_tiny_run(run, tiny_paths, task_file):
    """A stage-1 run of the tiny llama on the small task file (codes L x K)."""
    from ctr.config import TrainConfig
    from ctr.train.trainer import train
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
    assert adapted["chosen_by"] == "held-out shots"
    traj = [json.loads(x) for x in (fs / "trajectory_super_glue_cb.jsonl").read_text().splitlines()]
    assert adapted["search_code"] == traj[-1]["code"] and adapted["search_objective"] == traj[-1]["objective"]
    visited = [traj[0]["code"]] + [r["code"] for r in traj[1:] if r["accepted"]]
    held = adapted["held_out_objectives"]  # the returned code: the visited one best on held-out shots
    assert len(held) == len(visited)
    assert adapted["code"] == visited[max(i for i, h in enumerate(held) if h == min(held))]
    assert "prompt_tuning (median)" in (fs / "results.md").read_text()
    plain = tiny_paths["llama"]
    assert main(["few-shot", "--checkpoint", str(plain), "--tasks", "super_glue_cb"]) == 2
    assert "no codes" in capsys.readouterr().err


# ---- selection data never reaches evaluation --------------------------------------------
def saved_checkpoint(path, tiny_paths):
    """A CTR checkpoint of the tiny llama (random codes, no training): for the CLI."""
    from ctr.core.backbone import load_backbone
    backbone, tok = load_backbone(str(tiny_paths["llama"]))
    torch.manual_seed(0)
    cfg = CTRConfig(code_length=L, codebook_size=K, task_names=[f"t{i}" for i in range(3)],
                    codebook_init_scale=1.0, backbone=str(tiny_paths["llama"]))
    CTRModel(backbone, cfg, tok).save_pretrained(path)
    return path


def small_data_dir(root, n_rows: dict[str, int]):
    """A copy of the real data folder with the first n rows of each task's splits (and
    its templates): small enough to evaluate whole."""
    import shutil
    from ctr.tasks.registry import get_task
    src = data_dir()
    for name, n in n_rows.items():
        task = get_task(name)
        for split in [task.eval_split] + ([task.train_split] if task.train_split else []):
            rows = (src / task.data_folder / split).read_text().splitlines(keepends=True)[:n]
            (root / task.data_folder).mkdir(parents=True, exist_ok=True)
            (root / task.data_folder / split).write_text("".join(rows))
        if not (root / task.template_path).exists():
            shutil.copytree(src / task.template_path, root / task.template_path)
    return root


def test_eval_with_a_zero_label_codes_file_keeps_its_selection_examples_out(tiny_paths, tmp_path, capsys):
    """ANLI has no train split: zero-label selects on validation examples. `ctr eval
    --codes-file codes.json`, with no --exclude-indices, must not score them."""
    need_data()
    from ctr.cli import main
    from ctr.tasks.registry import load_examples
    data = str(small_data_dir(tmp_path / "data", {"anli_r1": 30, "super_glue_cb": 12}))
    run = saved_checkpoint(tmp_path / "ckpt", tiny_paths)
    zl = tmp_path / "zl"
    assert main(["zero-label", "--checkpoint", str(run), "--tasks", "anli_r1", "super_glue_cb",
                 "--n-inputs", "7", "--max-templates", "1", "--no-eval", "--data-dir", data,
                 "--output-dir", str(zl)]) == 0
    sel = json.loads((zl / "zero_label.json").read_text())["tasks"]
    picked = set(sel["anli_r1"]["selection_indices"])
    assert len(picked) == 7 and sel["anli_r1"]["selection_source"].startswith("eval")
    capsys.readouterr()
    ev = tmp_path / "ev"
    assert main(["eval", "--model", str(run), "--codes-file", str(zl / "codes.json"), "--tasks",
                 "anli_r1", "super_glue_cb", "--templates", "GPT-3 style", "--data-dir", data,
                 "--output-dir", str(ev)]) == 0
    assert "anli_r1: 7 examples excluded" in capsys.readouterr().out
    res = json.loads((ev / "results.json").read_text())["tasks"]
    all_anli = {e.index for e in load_examples("anli_r1", root=data)}
    assert len(all_anli) == 30
    assert set(res["anli_r1"]["indices"]) == all_anli - picked  # every other example, none of these
    assert res["anli_r1"]["examples"] == len(all_anli) - 7 and res["anli_r1"]["excluded"] == 7
    assert res["anli_r1"]["code"] == sel["anli_r1"]["code"]
    # CB selects on its train split: nothing to exclude
    assert res["super_glue_cb"]["examples"] == 12
    assert res["super_glue_cb"]["excluded"] == 0
    # an explicit --exclude-indices is united with the codes file's exclusions
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"anli_r1": [min(picked), min(all_anli - picked)]}))
    assert main(["eval", "--model", str(run), "--codes-file", str(zl / "codes.json"), "--tasks",
                 "anli_r1", "--templates", "GPT-3 style", "--max-examples", "20", "--data-dir", data,
                 "--exclude-indices", str(extra), "--output-dir", str(ev)]) == 0
    res = json.loads((ev / "results.json").read_text())["tasks"]["anli_r1"]
    assert not set(res["indices"]) & (picked | {min(all_anli - picked)}) and res["excluded"] == 8


def test_every_codes_file_reader_takes_both_formats(tmp_path):
    """codes.json now carries its exclusions; every reader of codes files reads it, and
    still reads an older plain {task: code} file (which excludes nothing)."""
    from ctr.inference.evaluate import codes_for_tasks, eval_exclusions
    from ctr.core.codes import codes_file_content, read_checked_codes, read_codes_file
    from ctr.fileio import write_json
    from ctr.inference.generation import GenerateConfig, resolve_code
    from ctr.adapt.common import candidate_codes
    model = ctr_model()
    codes = {"anli_r1": [1, 2, 3, 4], "super_glue_cb": [0, 0, 7, 7]}
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    write_json(new, codes_file_content(codes, {"anli_r1": [5, 3], "super_glue_cb": []}))
    write_json(old, codes)
    for path, excluded in ((new, {"anli_r1": {3, 5}, "super_glue_cb": set()}), (old, {})):
        assert read_codes_file(path)[0] == codes
        assert read_checked_codes(str(path), L, K) == codes
        assert resolve_code(model, GenerateConfig(task="super_glue_cb", codes_file=str(path))) == [0, 0, 7, 7]
        assert codes_for_tasks(model, EvalConfig(codes_file=str(path)), list(codes)) == codes
        assert sorted(c for c, _ in candidate_codes(model, str(path))) == sorted(codes.values())
        assert eval_exclusions(EvalConfig(codes_file=str(path))) == excluded
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"anli_r1": [5, 9], "hellaswag": [1]}))
    assert eval_exclusions(EvalConfig(codes_file=str(new), exclude_indices=str(extra))) == {
        "anli_r1": {3, 5, 9}, "super_glue_cb": set(), "hellaswag": {1}}
    # a codes.json passed as --exclude-indices gives its exclusions, not nothing
    assert eval_exclusions(EvalConfig(exclude_indices=str(new)))["anli_r1"] == {3, 5}


def _hide_eval_labels(monkeypatch):
    """Evaluation examples reach the selection code (ctr.tasks.splits, ctr.tasks.registry) without
    labels: any read fails. `ctr.inference.evaluate` keeps its own loader, to score at the end."""
    import ctr.tasks.registry as eval_tasks
    import ctr.tasks.splits as splits
    from ctr.tasks.registry import TaskExample
    real = eval_tasks.load_examples

    def hidden(task, split="eval", *a, **k):
        examples = real(task, split, *a, **k)
        if split != "eval":
            return examples
        return [TaskExample(e.index, e.fields, MappingProxyType(_NoLabels()), e.label_field)
                for e in examples]
    monkeypatch.setattr(eval_tasks, "load_examples", hidden)
    monkeypatch.setattr(splits, "load_examples", hidden)


def test_few_shot_and_prompt_tuning_judge_templates_without_evaluation_labels(tiny_paths, tmp_path,
                                                                              monkeypatch):
    """Template usability for the search and for prompt tuning is judged on the shots (CB:
    train split), never on labelled evaluation examples."""
    need_data()
    from ctr.tasks.registry import usable_templates
    from ctr.adapt.few_shot import FewShotConfig, run_few_shot
    from ctr.tasks.splits import few_shot
    run = saved_checkpoint(tmp_path / "ckpt", tiny_paths)
    shots = few_shot("super_glue_cb", 4, seed=0).examples
    expected = [t.name for t in usable_templates("super_glue_cb", examples=shots).usable][:2]
    _hide_eval_labels(monkeypatch)
    out = run_few_shot(FewShotConfig(
        checkpoint=str(run), tasks=["super_glue_cb"], shots=4, max_templates=2, max_sweeps=1,
        values="seen", max_examples=4, eval_max_templates=1, prompt_tuning=True, prompt_steps=1,
        output_dir=str(tmp_path / "fs")))
    assert out["adapted"]["super_glue_cb"]["templates"] == expected
    assert set(out["runs"]) == {"bitwise", "discrete", "prompt_tuning"}
    codes = json.loads((tmp_path / "fs" / "codes.json").read_text())
    assert codes == {"codes": {"super_glue_cb": out["adapted"]["super_glue_cb"]["code"]},
                     "exclude": {"super_glue_cb": []}}
