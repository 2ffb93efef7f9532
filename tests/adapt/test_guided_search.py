"""Gradient-guided Bitwise Search: the first-order estimate, equivalence with the exhaustive
search at top = K-1, resumable trajectories, options, few-shot end to end."""
from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F

from ctr.adapt.bitwise_search import Shot, ShotObjective, bitwise_search
from ctr.adapt.guided_search import (GradientGuide, check_top, loss_and_gradient, make_guide,
                                     prompt_table, ranking_recall, resolve_top, run_search)
from ctr.inference.scoring import RankScorer

from adapt_support import ctr_model, dies_after, need_data, saved_checkpoint  # tests/adapt is on sys.path

L, K = 4, 8
ARCHS = ["llama", "t5"]
SHOTS = [Shot([5 + i, 6, 7, 8 + i], [[20, 21], [22]], i % 2) for i in range(5)]


def setup(arch, kind="loss"):
    model = ctr_model(arch)
    obj = ShotObjective(RankScorer(model, 16, progress=False), SHOTS, kind)
    return model, obj, list(model.code_table().values())


def strip(path):
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in path.read_text().splitlines()]


# ---- the estimate ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_pass_computes_the_search_objective(arch):
    """The loss the gradient comes from is the loss objective the search scores exactly
    (through the adapter's training-style pass vs the scorer's cached pass)."""
    model, obj, _ = setup(arch)
    table = prompt_table(model)
    for code in ([0, 1, 2, 3], [7, 7, 0, 5]):
        loss, grad = loss_and_gradient(model, SHOTS, table[torch.tensor(code)], batch_size=2)
        assert loss == pytest.approx(obj([code])[0], abs=1e-4)
        assert grad.shape == (L, model.decoder.out_features) and grad.abs().sum() > 0
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again


@pytest.mark.parametrize("arch", ARCHS)
def test_first_order_estimate_matches_finite_differences(arch):
    """g_i . Dec(c_v' - c_v) is the derivative of the loss along the codebook step
    c_v -> c_v + eps (c_v' - c_v) at position i: a five-point central difference (fp64
    model, fp64 cross-entropy) agrees for every substitution."""
    model = ctr_model(arch).double()
    for m in model.modules():  # T5's ReLU makes the loss only piecewise smooth: use GELU here
        if isinstance(getattr(m, "act", None), torch.nn.ReLU):
            m.act = torch.nn.GELU()
    model.target_output = lambda out, *a: types.SimpleNamespace(
        token_loss_sum=F.cross_entropy(out.logits.double(), out.targets, reduction="sum"))
    code = [1, 2, 3, 4]
    est = GradientGuide(model, SHOTS, 3).estimates(code)
    book = model.quantizer.weight.detach()

    def loss_at(i, v, eps):
        c = book[torch.tensor(code)].clone()
        c[i] += eps * (book[v] - book[code[i]])
        with torch.no_grad():
            return loss_and_gradient(model, SHOTS, model.decoder(c))[0]
    eps, worst = 3e-2, 0.0
    for i in range(L):
        assert est[i, code[i]] == 0
        for v in range(K):
            if v == code[i]:
                continue
            fd = (-loss_at(i, v, 2 * eps) + 8 * loss_at(i, v, eps) - 8 * loss_at(i, v, -eps)
                  + loss_at(i, v, -2 * eps)) / (12 * eps)
            worst = max(worst, abs(fd - float(est[i, v])) / (abs(fd) + 1e-2))
    assert worst < 1e-2, worst


# ---- the search ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["loss", "accuracy"])
def test_top_k_minus_1_is_the_exhaustive_search(arch, kind):
    model, obj, starts = setup(arch, kind)
    values = [list(range(K))] * L
    ex = bitwise_search(obj, starts, values, max_sweeps=3, seed=1)
    guide = GradientGuide(model, SHOTS, K - 1)
    gd, report = run_search(obj, starts, values, guide, max_sweeps=3, seed=1)
    assert gd.code == ex.code and gd.objective == ex.objective and gd.evaluations == ex.evaluations
    assert len(gd.trajectory) == len(ex.trajectory)
    codes_at = [gd.start_code] + [r["code"] for r in gd.trajectory[1:]]
    for before, a, b in zip(codes_at, ex.trajectory[1:], gd.trajectory[1:]):
        assert b["scored"] == [v for v in range(K) if v != before[b["position"]]]  # every other value
        assert {k: a[k] for k in a if k != "time"} == {k: b[k] for k in a if k != "time"}
    # every other value fits the top: nothing to rank, so no backward pass
    assert report["gradient_passes"] == 0 and report["evaluations"] == ex.evaluations


@pytest.mark.parametrize("arch", ARCHS)
def test_guided_search_scores_top_values_and_keeps_only_strict_improvements(arch):
    model, obj, starts = setup(arch)
    values = [list(range(K))] * L
    guide = GradientGuide(model, SHOTS, 2)
    res, report = run_search(obj, starts, values, guide, max_sweeps=4, seed=0)
    prev = res.start_objective
    codes_at = [res.start_code] + [r["code"] for r in res.trajectory[1:]]
    for before, r in zip(codes_at, res.trajectory[1:]):
        pos = r["position"]
        assert r["candidates"] == K - 1 and len(r["scored"]) == r["tried"] == 2
        est = GradientGuide(model, SHOTS, 2).estimates(before)[pos]
        others = [v for v in range(K) if v != before[pos]]
        ranked = sorted(others, key=lambda v: (float(est[v]), others.index(v)))
        assert sorted(r["scored"]) == sorted(ranked[:2]) and r["scored"] == sorted(r["scored"])
        assert r["estimates"] == [round(float(est[v]), 6) for v in r["scored"]]
        if r["accepted"]:
            assert r["objective"] < prev and r["code"][pos] in r["scored"]
            assert r["objective"] == pytest.approx(obj([r["code"]])[0], abs=1e-4)
        else:
            assert r["objective"] == prev and r["code"] == before
        prev = r["objective"]
    scored = sum(r["tried"] for r in res.trajectory[1:])
    assert res.evaluations == report["evaluations"] == len(starts) + scored
    accepted = sum(r["accepted"] for r in res.trajectory[1:])
    assert 1 <= report["gradient_passes"] <= accepted + 1  # one per code the search ranked at
    assert report["objective"] == res.objective and report["seconds"] > 0


def test_positions_with_no_more_values_than_top_are_scored_whole_without_a_gradient():
    """--values seen can leave a position <= top values to try: all are scored (the
    exhaustive search's answer) and no backward pass is spent ranking them."""
    model, obj, starts = setup("llama")
    values = [[0, 2, 5], [1, 3], [0, 1, 2], [7]]
    res, report = run_search(obj, starts, values, GradientGuide(model, SHOTS, 3), max_sweeps=2, seed=0)
    ex, _ = run_search(obj, starts, values, None, max_sweeps=2, seed=0)
    assert report["gradient_passes"] == 0 and report["positions_ranked"] == 0
    assert res.code == ex.code and res.evaluations == ex.evaluations
    assert all(r["estimates"] is None for r in res.trajectory[1:] if "scored" in r)


@pytest.mark.parametrize("arch", ARCHS)
def test_guided_search_composes_with_seen_values(arch):
    model, obj, starts = setup(arch)
    values = [[0, 2, 5], [1, 3], [0, 1, 2, 3, 4, 5, 6], [7]]
    res, _ = run_search(obj, starts, values, GradientGuide(model, SHOTS, 2), max_sweeps=2, seed=0)
    for r in res.trajectory[1:]:
        assert set(r.get("scored", [])) <= set(values[r["position"]])
        assert r["tried"] <= 2
    assert all(res.code[p] in values[p] or res.code[p] == res.start_code[p] for p in range(L))


def test_interrupted_guided_search_resumes_the_same_trajectory(tmp_path):
    model, obj, starts = setup("llama")
    values = [list(range(K))] * L
    full = bitwise_search(obj, starts, values, max_sweeps=3, seed=2, trajectory_path=tmp_path / "full.jsonl",
                          select=GradientGuide(model, SHOTS, 3))
    dies = dies_after(obj, 4)
    dies.fingerprint = obj.fingerprint
    cut = tmp_path / "cut.jsonl"
    with pytest.raises(KeyboardInterrupt):
        bitwise_search(dies, starts, values, max_sweeps=3, seed=2, trajectory_path=cut,
                       select=GradientGuide(model, SHOTS, 3))
    assert len(cut.read_text().splitlines()) == 3  # start + 2 positions
    guide = GradientGuide(model, SHOTS, 3)
    resumed = bitwise_search(obj, starts, values, max_sweeps=3, seed=2, trajectory_path=cut, select=guide)
    assert resumed.code == full.code and resumed.objective == full.objective
    assert strip(cut) == strip(tmp_path / "full.jsonl")
    assert all("scored" in r for r in strip(cut)[1:])  # each record says which values were scored
    # another top (or the exhaustive search) is another trajectory: started fresh
    other = bitwise_search(obj, starts, values, max_sweeps=3, seed=2, trajectory_path=cut,
                           select=GradientGuide(model, SHOTS, 5))
    fresh = bitwise_search(obj, starts, values, max_sweeps=3, seed=2, select=GradientGuide(model, SHOTS, 5))
    assert other.code == fresh.code and other.evaluations == fresh.evaluations
    plain = bitwise_search(obj, starts, values, max_sweeps=3, seed=2, trajectory_path=cut)
    assert all("scored" not in r for r in strip(cut)[1:])
    assert plain.code == bitwise_search(obj, starts, values, max_sweeps=3, seed=2).code


def test_recall_along_an_exhaustive_trajectory():
    model, obj, starts = setup("t5")
    values = [list(range(K))] * L
    ex = bitwise_search(obj, starts, values, max_sweeps=2, seed=0)
    full = ranking_recall(GradientGuide(model, SHOTS, K - 1), ex.trajectory, values, tops=[1, 3])
    assert full["recall"] == 1.0 and full["positions"] == len(ex.trajectory) - 1
    assert 0.0 <= full["recall_at"]["1"] <= full["recall_at"]["3"] <= 1.0
    guide = GradientGuide(model, SHOTS, 3)
    r = ranking_recall(guide, ex.trajectory, values)
    assert r["recall"] == full["recall_at"]["3"] and r["ranks"] == full["ranks"]
    assert guide.gradients == len({tuple(x["code"]) for x in ex.trajectory[:-1]})


# ---- options ---------------------------------------------------------------------------
def test_bad_top_is_an_error_naming_the_flag():
    model = ctr_model()
    for bad in (0, -1, K, 100):
        with pytest.raises(ValueError, match="--guide-top"):
            GradientGuide(model, SHOTS, bad)
    with pytest.raises(ValueError, match=r"--guide-top 8 is more than K-1 = 7"):
        resolve_top(8, K)
    with pytest.raises(ValueError, match=r"--guide-top must be an integer >= 1"):
        check_top(0)
    assert resolve_top(None, K) == K - 1 and resolve_top(None, 128) == 8  # the default fits K
    assert make_guide("none", model, SHOTS, 3) is None
    with pytest.raises(ValueError, match="--guide must be one of"):
        make_guide("beam", model, SHOTS, 3)
    from ctr.adapt.few_shot import FewShotConfig
    with pytest.raises(ValueError, match="--guide-top"):
        FewShotConfig(guide="gradient", guide_top=0)
    with pytest.raises(ValueError, match="--guide must be one of"):
        FewShotConfig(guide="beam")
    from ctr.experiments.synth import SynthConfig
    with pytest.raises(ValueError, match="--guide-top 16 is more than K-1 = 15"):
        SynthConfig(guide_top=16)


def test_cli_rejects_bad_guide_options(tiny_paths, tmp_path, capsys):
    from ctr.cli import main
    ckpt = saved_checkpoint(tmp_path / "ckpt", tiny_paths)
    assert main(["few-shot", "--checkpoint", str(ckpt), "--guide", "gradient", "--guide-top", "0"]) == 2
    assert "--guide-top must be an integer >= 1" in capsys.readouterr().err
    assert main(["few-shot", "--checkpoint", str(ckpt), "--tasks", "super_glue_cb", "--guide", "gradient",
                 "--guide-top", str(K), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"--guide-top {K} is more than K-1 = {K - 1}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["few-shot", "--guide", "beam"])


# ---- few-shot end to end ---------------------------------------------------------------
@pytest.mark.parametrize("objective", ["loss", "accuracy"])
def test_few_shot_adapt_task_with_the_gradient_guide(tmp_path, objective):
    need_data()
    from ctr.adapt.common import candidate_codes
    from ctr.adapt.few_shot import FewShotConfig, adapt_task
    from ctr.core.model import CTRModel
    from ctr.tasks.splits import few_shot
    model = ctr_model()
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    model = CTRModel.from_pretrained(folder, backbone=model.backbone, tokenizer=model.tokenizer)
    split = few_shot("super_glue_cb", 4, seed=0)

    def adapt(out, **kw):
        cfg = FewShotConfig(checkpoint=str(folder), shots=4, max_templates=1, max_sweeps=2,
                            max_input_len=40, holdout=0.25, objective=objective, **kw)
        (tmp_path / out).mkdir(exist_ok=True)
        return adapt_task(model, "super_glue_cb", cfg, candidate_codes(model),
                          RankScorer(model, 16, progress=False), tmp_path / out, split)
    guided = adapt("g", guide="gradient", guide_top=2)
    search = guided["search"]
    assert search["guide"] == "gradient" and search["top"] == 2 and search["gradient_passes"] >= 1
    assert search["evaluations"] == guided["codes_scored"]
    traj = [json.loads(x) for x in (tmp_path / "g" / "trajectory_super_glue_cb.jsonl").read_text().splitlines()]
    assert traj[0]["settings"]["select"] and all(len(r["scored"]) <= 2 for r in traj[1:])
    assert guided["search_code"] == traj[-1]["code"] and guided["chosen_by"] == "held-out shots"
    again = adapt("g", guide="gradient", guide_top=2)  # replayed from the trajectory, nothing scored
    assert again["search"]["evaluations"] == 0 and again["search_code"] == guided["search_code"]
    full = adapt("k", guide="gradient", guide_top=K - 1)  # K-1: the exhaustive search's answer
    exhaustive = adapt("e", guide="none")
    for key in ("search_code", "start_code", "code", "codes_scored"):
        assert full[key] == exhaustive[key], key
    assert exhaustive["search"]["guide"] == "none"


# ---- the benchmark ---------------------------------------------------------------------
def test_guided_bench_compares_several_tops_with_one_exhaustive_search(tiny_paths, tmp_path, capsys):
    """`python -m ctr.bench.search --guided --guide-top 2,7`: one guided search per top
    against the same exhaustive search; at K-1 = 7 the guided search is the exhaustive one
    (same code, ratio 1), the headline (top 2) prints last."""
    need_data()
    from ctr.bench.search import main
    ckpt = saved_checkpoint(tmp_path / "ckpt", tiny_paths)
    out = tmp_path / "bench.json"
    main(["--guided", "--checkpoint", str(ckpt), "--shots", "2", "--max-input-len", "16",
          "--max-sweeps", "1", "--guide-top", "2,7", "--trajectory-dir", str(tmp_path / "traj"),
          "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("top=7 eval_ratio=1.00 ") and lines[-2].endswith("objective_ratio=1.0000")
    assert lines[-1].startswith("eval_ratio=")
    r = json.loads(out.read_text())
    two, seven = r["by_top"]
    assert (two["top"], seven["top"]) == (2, 7) and r["guide_top"] == 2
    assert seven["code"] == r["exhaustive"]["code"] and seven["same_code"] and seven["objective_ratio"] == 1
    assert seven["evaluations"] == r["exhaustive"]["evaluations"] > two["evaluations"]
    assert r["eval_ratio"] == two["eval_ratio"] and r["guided"]["evaluations"] == two["evaluations"]
    assert {p.name for p in (tmp_path / "traj").iterdir()} == {
        "trajectory_guided.jsonl", "trajectory_guided_top7.jsonl", "trajectory_exhaustive.jsonl"}


@pytest.mark.parametrize("bad, message", [("0", "must be an integer >= 1"), ("8,x", "integers separated"),
                                          ("4,4", "repeated")])
def test_guided_bench_rejects_bad_tops(bad, message, capsys):
    from ctr.bench.search import main
    with pytest.raises(SystemExit):
        main(["--guided", "--guide-top", bad])
    assert message in capsys.readouterr().err
