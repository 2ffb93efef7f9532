"""Resumable Bitwise Search trajectories: truncated lines, stale settings start fresh, empty shots."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctr.adapt.bitwise_search import Shot, ShotObjective, bitwise_search
from ctr.config import CTRConfig
from ctr.core.model import CTRModel
from ctr.inference.scoring import RankScorer
from ctr.core.testing import tiny_backbone

from adapt_support import dies_after  # tests/adapt is on sys.path under pytest

L, K = 4, 8


TARGET = [3, 7, 0, 5]


def cut_last_line(path: Path) -> None:
    """What a kill in the middle of append_jsonl leaves: half of the last line, no newline."""
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    path.write_text(text[: len(text) - len(last) - 1] + last[: len(last) // 2])


def hamming(codes):
    return [float(sum(a != b for a, b in zip(c, TARGET))) for c in codes]


def table_objective(seed=7):
    table = torch.rand(*(K,) * L, generator=torch.Generator().manual_seed(seed))
    return lambda codes: [float(table[tuple(c)]) for c in codes]


class Counting:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, codes):
        self.calls += 1
        return self.f(codes)


def strip_traj(p: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in p.read_text().splitlines()]


def test_a_corrupt_middle_trajectory_line_is_a_clear_error(tmp_path):
    traj = tmp_path / "trajectory.jsonl"
    bitwise_search(hamming, [[1, 1, 1, 1]], [list(range(K))] * L, seed=0, trajectory_path=traj)
    lines = traj.read_text().splitlines()
    lines[1] = lines[1][:10]
    traj.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"trajectory\.jsonl:2: corrupt JSON line"):
        bitwise_search(hamming, [[1, 1, 1, 1]], [list(range(K))] * L, seed=0, trajectory_path=traj)


def test_truncated_trajectory_line_resumes_the_search(tmp_path):
    f, starts, values = table_objective(), [[0, 0, 0, 0], [5, 5, 5, 5]], [list(range(K))] * L
    full = bitwise_search(f, starts, values, seed=4, trajectory_path=tmp_path / "full.jsonl")
    dies = dies_after(f, 5)
    cut = tmp_path / "cut.jsonl"
    with pytest.raises(KeyboardInterrupt):
        bitwise_search(dies, starts, values, seed=4, trajectory_path=cut)
    cut_last_line(cut)  # start + 3 positions recorded, the third cut mid-write
    with pytest.warns(RuntimeWarning, match=r"cut\.jsonl:4: dropped a truncated last line"):
        resumed = bitwise_search(f, starts, values, seed=4, trajectory_path=cut)
    assert resumed.code == full.code and resumed.objective == full.objective
    assert strip_traj(cut) == strip_traj(tmp_path / "full.jsonl")  # appended after a clean cut


def tiny_ctr(seed=0) -> CTRModel:
    backbone, tok = tiny_backbone("llama")
    torch.manual_seed(seed)
    cfg = CTRConfig(code_length=L, codebook_size=K, task_names=["t0", "t1", "t2"], codebook_init_scale=1.0)
    return CTRModel(backbone, cfg, tok).eval()


SHOTS_A = [Shot([5 + i, 6, 7], [[20, 21], [22]], i % 2) for i in range(4)]
SHOTS_B = [Shot([9, 8 + i], [[30], [31, 32]], (i + 1) % 2) for i in range(3)]


@pytest.mark.parametrize("change", ["shots", "objective", "values", "seed", "starts"])
def test_stale_trajectory_starts_fresh_and_matches_a_fresh_search(tmp_path, capsys, change):
    model = tiny_ctr()
    scorer = RankScorer(model, 16, progress=False)
    starts = list(model.code_table().values())
    values = [list(range(K))] * L
    old = dict(obj=ShotObjective(scorer, SHOTS_A), starts=starts, values=values, seed=0)
    new = dict(old)
    if change == "shots":
        new["obj"] = ShotObjective(scorer, SHOTS_B)
    elif change == "objective":
        new["obj"] = ShotObjective(scorer, SHOTS_A, "accuracy")
    elif change == "values":
        new["values"] = [[0, 1, 2]] * L
    elif change == "seed":
        new["seed"] = 1
    else:
        new["starts"] = [[1, 1, 1, 1], [6, 6, 6, 6]]
    traj = tmp_path / "trajectory_task.jsonl"
    run = lambda s, path=None: bitwise_search(s["obj"], s["starts"], s["values"], max_sweeps=1,
                                              seed=s["seed"], trajectory_path=path)
    run(old, traj)
    capsys.readouterr()
    counted = Counting(new["obj"])
    resumed = bitwise_search(counted, new["starts"], new["values"], max_sweeps=1, seed=new["seed"],
                             trajectory_path=traj, objective_id=new["obj"].fingerprint())
    assert f"{traj}: recorded with other settings" in capsys.readouterr().out
    fresh = run(new)
    assert resumed.code == fresh.code and resumed.start_code == fresh.start_code
    assert resumed.objective == pytest.approx(fresh.objective, abs=1e-6)
    assert resumed.objective == pytest.approx(new["obj"]([resumed.code])[0], abs=1e-4)
    assert counted.calls > 0 and resumed.evaluations == fresh.evaluations
    # the stale file is replaced by the new trajectory, which a rerun replays without scoring
    again = Counting(new["obj"])
    replay = bitwise_search(again, new["starts"], new["values"], max_sweeps=1, seed=new["seed"],
                            trajectory_path=traj, objective_id=new["obj"].fingerprint())
    assert again.calls == 0 and replay.evaluations == 0 and replay.code == fresh.code
    assert "other settings" not in capsys.readouterr().out


def test_same_settings_replay_without_scoring_and_respect_max_sweeps(tmp_path, capsys):
    f, starts, values = table_objective(3), [[0, 1, 2, 3], [4, 4, 4, 4]], [list(range(K))] * L
    traj = tmp_path / "t.jsonl"
    full = bitwise_search(f, starts, values, seed=1, trajectory_path=traj)
    assert full.sweeps >= 2
    counted = Counting(f)
    replay = bitwise_search(counted, starts, values, seed=1, trajectory_path=traj)
    assert counted.calls == 0 and replay.evaluations == 0
    assert (replay.code, replay.objective, replay.sweeps) == (full.code, full.objective, full.sweeps)
    # a lower --max-sweeps replays the prefix it covers: the same answer as a fresh short search
    short = bitwise_search(counted, starts, values, max_sweeps=1, seed=1, trajectory_path=traj)
    fresh_short = bitwise_search(f, starts, values, max_sweeps=1, seed=1)
    assert counted.calls == 0 and (short.code, short.objective) == (fresh_short.code, fresh_short.objective)
    assert "other settings" not in capsys.readouterr().out


def test_trajectory_without_fingerprint_starts_fresh(tmp_path, capsys):
    traj = tmp_path / "old.jsonl"
    starts, values = [[1, 1, 1, 1]], [list(range(K))] * L
    bitwise_search(hamming, starts, values, seed=0, trajectory_path=traj)
    recs = [json.loads(x) for x in traj.read_text().splitlines()]
    del recs[0]["settings"]  # a trajectory written before fingerprints
    recs[-1]["code"], recs[-1]["objective"] = [0, 0, 0, 0], 99.0  # and a wrong answer in it
    traj.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = bitwise_search(hamming, starts, values, seed=0, trajectory_path=traj)
    assert "no fingerprint" in capsys.readouterr().out
    assert res.code == TARGET and res.objective == 0.0


# ---- empty shots -----------------------------------------------------------------------
def test_empty_shots_or_holdout_are_errors(tmp_path):
    from ctr.adapt.few_shot import FewShotConfig, adapt_task
    from ctr.tasks.splits import AdaptSplit
    from ctr.adapt.common import candidate_codes
    with pytest.raises(ValueError, match="no shots"):
        ShotObjective(None, [])
    model = tiny_ctr()
    scorer = RankScorer(model, 8, progress=False)
    cands = candidate_codes(model)
    with pytest.raises(ValueError, match=r"super_glue_rte: no shots drawn \(--shots 0"):
        adapt_task(model, "super_glue_rte", FewShotConfig(shots=0), cands, scorer, tmp_path,
                   AdaptSplit("super_glue_rte", [], "train"))
    one = AdaptSplit("super_glue_rte", [object()], "train")  # never rendered: the error comes first
    with pytest.raises(ValueError, match=r"super_glue_rte: --holdout 0.5 holds out all 1 shots"):
        adapt_task(model, "super_glue_rte", FewShotConfig(shots=1, holdout=0.5), cands, scorer,
                   tmp_path, one)
    assert not list(tmp_path.iterdir())  # no trajectory was started


def test_adapt_task_trajectory_is_tied_to_the_checkpoint(tmp_path, capsys):
    try:
        from ctr.tasks.mixture import data_dir
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"held-out data not available: {e}")
    from ctr.adapt.few_shot import FewShotConfig, adapt_task
    from ctr.tasks.splits import few_shot
    from ctr.adapt.common import candidate_codes
    split = few_shot("super_glue_cb", 3, seed=0)
    model = tiny_ctr()
    table = model.code_table()

    def adapt(tag, out):
        folder = tmp_path / tag
        model.save_pretrained(folder)
        loaded = CTRModel.from_pretrained(folder, backbone=model.backbone, tokenizer=model.tokenizer)
        cfg = FewShotConfig(checkpoint=str(folder), shots=3, max_templates=1, max_sweeps=1, values="seen",
                            max_input_len=40)  # char tokens: keep the shots short
        (tmp_path / out).mkdir(exist_ok=True)
        return adapt_task(loaded, "super_glue_cb", cfg, candidate_codes(loaded),
                          RankScorer(loaded, 16, progress=False), tmp_path / out, split)
    adapt("ckpt_a", "out")
    with torch.no_grad():  # another checkpoint: same code table, other code -> prompt decoder
        model.decoder.weight.mul_(-3.0)
    assert model.code_table() == table
    capsys.readouterr()
    shared, fresh = adapt("ckpt_b", "out"), adapt("ckpt_b", "fresh")
    assert "trajectory_super_glue_cb.jsonl: recorded with other settings (objective differ)" \
        in capsys.readouterr().out
    for key in ("code", "search_code", "start_code", "codes_scored"):
        assert shared[key] == fresh[key], key
    for key in ("search_objective", "start_objective"):
        assert shared[key] == pytest.approx(fresh[key], abs=1e-4), key
