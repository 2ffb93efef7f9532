"""Crash safety and resume: truncated JSONL lines, atomic folders, checkpoint fallback,
stale Bitwise Search trajectories, empty shots."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ctr.fileio as fileio
from ctr.adapt.bitwise_search import Shot, ShotObjective, bitwise_search
from ctr.train.checkpoint import latest_checkpoint
from ctr.config import CTRConfig, TrainConfig
from ctr.fileio import atomic_dir, complete_dir, read_jsonl
from ctr.core.model import CTRModel
from ctr.inference.scoring import RankScorer
from ctr.core.testing import tiny_backbone
from ctr.train.trainer import train

L, K = 4, 8


@pytest.fixture(scope="module")
def runs(tiny_paths, tmp_path_factory):
    """The task file, an uninterrupted run, and a run killed after step 5 (checkpoints 2, 4),
    trained once for the module; tests copy the killed run before touching it."""
    from conftest import write_tasks
    root = tmp_path_factory.mktemp("runs")
    task_file = write_tasks(root / "tasks.jsonl")
    full = train(cfg_for(tiny_paths, task_file, root / "full"))
    train(cfg_for(tiny_paths, task_file, root / "cut"), stop_after=5)
    return task_file, full, root / "cut"


def killed_copy(runs, dest: Path) -> Path:
    shutil.copytree(runs[2], dest)
    return dest


def cfg_for(tiny_paths, task_file, out, **kw):
    base = dict(output_dir=str(out), model=str(tiny_paths["llama"]), preset="tiny",
                train_files=[str(task_file)], max_source_len=32, max_target_len=8,
                code_length=3, codebook_size=8, save_every=2)
    base.update(kw)
    return TrainConfig(**base)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "ctr_weights.safetensors")), load_file(str(b / "ctr_weights.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def strip_metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "step_time"}
            for x in path.read_text().splitlines()]


def cut_last_line(path: Path) -> None:
    """What a kill in the middle of append_jsonl leaves: half of the last line, no newline."""
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    path.write_text(text[: len(text) - len(last) - 1] + last[: len(last) // 2])


# ---- JSONL ------------------------------------------------------------------------------
def test_truncated_metrics_line_resumes_to_the_uninterrupted_run(tiny_paths, runs, tmp_path):
    task_file, full, _ = runs
    cut = killed_copy(runs, tmp_path / "cut")
    metrics = cut / "metrics.jsonl"
    cut_last_line(metrics)  # the record of step 5, cut mid-write
    with pytest.warns(RuntimeWarning, match="metrics.jsonl:5: dropped a truncated last line"):
        resumed = train(cfg_for(tiny_paths, task_file, cut, resume=True))
    same_weights(full, resumed)
    assert strip_metrics(full.parent / "metrics.jsonl") == strip_metrics(metrics)


def test_read_jsonl_drops_only_a_truncated_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": [1, 2')
    with pytest.warns(RuntimeWarning, match=r"log\.jsonl:3"):
        assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert p.read_text().endswith("[1, 2")  # reading alone changes nothing
    with pytest.warns(RuntimeWarning):
        read_jsonl(p, repair=True)
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'
    p.write_text('{"a": 1}\n{"a": 2}')  # complete record, newline cut off: kept, newline restored
    assert read_jsonl(p, repair=True) == [{"a": 1}, {"a": 2}]
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_corrupt_middle_line_is_a_clear_error(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: corrupt JSON line"):
        read_jsonl(p)
    from ctr.train.trainer import _truncate_metrics
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        _truncate_metrics(p, 3)
    traj = tmp_path / "trajectory.jsonl"
    bitwise_search(hamming, [[1, 1, 1, 1]], [list(range(K))] * L, seed=0, trajectory_path=traj)
    lines = traj.read_text().splitlines()
    lines[1] = lines[1][:10]
    traj.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"trajectory\.jsonl:2: corrupt JSON line"):
        bitwise_search(hamming, [[1, 1, 1, 1]], [list(range(K))] * L, seed=0, trajectory_path=traj)


# ---- Bitwise Search trajectories -----------------------------------------------------
TARGET = [3, 7, 0, 5]


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


def test_truncated_trajectory_line_resumes_the_search(tmp_path):
    f, starts, values = table_objective(), [[0, 0, 0, 0], [5, 5, 5, 5]], [list(range(K))] * L
    full = bitwise_search(f, starts, values, seed=4, trajectory_path=tmp_path / "full.jsonl")
    calls = {"n": 0}

    def dies(codes):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return f(codes)
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


# ---- atomic folders --------------------------------------------------------------------
def fill(folder: Path, tag: str, n: int = 3) -> None:
    for i in range(n):
        (folder / f"f{i}").write_text(tag)


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_atomic_dir_crash_inside_the_block_keeps_the_old_folder(tmp_path):
    target = tmp_path / "final"
    with atomic_dir(target) as t:
        fill(t, "old")
    with pytest.raises(RuntimeError), atomic_dir(target) as t:
        fill(t, "new", 2)
        raise RuntimeError("killed while writing")
    assert contents(target) == {f"f{i}": "old" for i in range(3)}
    assert leftovers(tmp_path, "final") == []
    with atomic_dir(target) as t:
        fill(t, "new")
    assert contents(target) == {f"f{i}": "new" for i in range(3)}
    assert leftovers(tmp_path, "final") == []


def test_atomic_dir_temp_names_are_unique_per_use(tmp_path):
    target = tmp_path / "final"
    with atomic_dir(target) as a, atomic_dir(target) as b:  # two uses at once in one process
        assert a != b
        fill(a, "a")
        fill(b, "b")
    assert contents(target) == {f"f{i}": "a" for i in range(3)}  # the last swap wins, whole
    names, barrier = [], threading.Barrier(2)

    def writer(tag):
        with atomic_dir(target) as t:
            names.append(t.name)
            barrier.wait(timeout=30)  # both temp folders exist at the same time
            fill(t, tag)
    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("x", "y")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(names)) == 2 and all(str(os.getpid()) in n for n in names)
    assert set(contents(target).values()) in ({"x"}, {"y"})
    assert leftovers(tmp_path, "final") == []


def test_atomic_dir_crash_between_swap_steps_leaves_a_complete_folder(tmp_path, monkeypatch):
    target = tmp_path / "final"
    with atomic_dir(target) as t:
        fill(t, "old")
    # without RENAME_EXCHANGE: old -> backup, then new -> target; die before the second rename
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    real_rename, renames = os.rename, []

    def rename(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        if Path(dst) == target and Path(src).name.startswith(".final.tmp-") and len(renames) > 1:
            raise KeyboardInterrupt  # killed between the two renames
        return real_rename(src, dst)
    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as t:
        fill(t, "new")
    monkeypatch.setattr(fileio.os, "rename", real_rename)
    assert not target.exists()
    found = complete_dir(target)
    assert found == fileio.backup_path(target) and contents(found) == {f"f{i}": "old" for i in range(3)}
    # the next writer first puts the old folder back, then swaps its own in
    with atomic_dir(target) as t:
        assert contents(target) == {f"f{i}": "old" for i in range(3)}
        fill(t, "newer")
    assert contents(target) == {f"f{i}": "newer" for i in range(3)}
    assert complete_dir(target) == target and not fileio.backup_path(target).exists()


def exchange_supported(tmp_path: Path) -> bool:
    a, b = tmp_path / "xa", tmp_path / "xb"
    a.mkdir(), b.mkdir()
    ok = fileio._exchange(a, b)
    shutil.rmtree(a), shutil.rmtree(b)
    return ok


def test_atomic_dir_swap_never_leaves_the_target_missing(tmp_path):
    if not exchange_supported(tmp_path):
        pytest.skip("no RENAME_EXCHANGE here: the swap goes through the backup name (tested above)")
    target = tmp_path / "final"
    with atomic_dir(target) as t:
        fill(t, "0")
    stop, seen_bad = threading.Event(), []

    def reader():
        # by path, as from_pretrained reads a model folder: whichever folder the name points
        # to when a file is opened is complete (a listing of a folder that a swap has since
        # moved away and deleted may come back empty: that is not what readers do)
        while not stop.is_set():
            try:
                got = [(target / f"f{i}").read_text() for i in range(3)]
            except FileNotFoundError as e:
                seen_bad.append(repr(e))
                continue
            if not all(got):  # (files read one by one across a swap may mix versions)
                seen_bad.append(got)
    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(1, 40):
            with atomic_dir(target) as t:
                fill(t, str(i))
    finally:
        stop.set()
        th.join()
    assert seen_bad == [] and contents(target) == {f"f{i}": "39" for i in range(3)}
    assert leftovers(tmp_path, "final") == []


def test_atomic_dir_removes_temp_folders_of_dead_processes(tmp_path):
    target = tmp_path / "final"
    dead = tmp_path / f".final.tmp-{fileio._HOST}-999999999-abc"  # beyond any pid_max
    dead.mkdir()
    other_host = tmp_path / ".final.tmp-elsewhere-999999999-abc"
    other_host.mkdir()
    with atomic_dir(target) as t:
        fill(t, "x")
    assert not dead.exists() and other_host.exists()  # another host's writer may be alive


def test_write_json_uses_unique_temp_names(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        return real(src, dst)
    monkeypatch.setattr(fileio.os, "replace", replace)
    for i in range(2):
        fileio.write_json(tmp_path / "a.json", {"i": i})
    assert len(set(seen)) == 2 and json.loads((tmp_path / "a.json").read_text()) == {"i": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# ---- checkpoints -------------------------------------------------------------------------
def break_missing_state(c):
    (c / "trainer_state.json").unlink()


def break_invalid_state(c):
    (c / "trainer_state.json").write_text('{"step": 4, "optim')


def break_missing_optimizer(c):
    (c / "optimizer.safetensors").unlink()


def break_truncated_weights(c):
    w = c / "model" / "ctr_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-16])


@pytest.mark.parametrize("damage", [break_missing_state, break_invalid_state, break_missing_optimizer,
                                    break_truncated_weights])
def test_latest_checkpoint_falls_back_to_the_newest_complete_one(tiny_paths, runs, tmp_path,
                                                                 capsys, damage):
    task_file, full, _ = runs
    run = killed_copy(runs, tmp_path / "run")
    newest, older = run / "checkpoint-0000004", run / "checkpoint-0000002"
    assert latest_checkpoint(run) == newest
    damage(newest)
    capsys.readouterr()
    assert latest_checkpoint(run) == older
    assert f"{newest}: incomplete checkpoint" in capsys.readouterr().out
    if damage is break_truncated_weights:  # and the resume from there is the uninterrupted run
        resumed = train(cfg_for(tiny_paths, task_file, run, resume=True))
        same_weights(full, resumed)
        assert strip_metrics(full.parent / "metrics.jsonl") == strip_metrics(run / "metrics.jsonl")


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
