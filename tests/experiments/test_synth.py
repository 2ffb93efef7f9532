"""The synthetic compositional suite: split, determinism, and a reduced end-to-end run."""
from __future__ import annotations

import itertools
import json

import pytest

from ctr.experiments import synth_tasks as st
from ctr.cli import main
from ctr.experiments.synth import SynthConfig, build_suite, run_synth
from ctr.experiments.synth_report import METHOD_TITLES


def primitives_of(combos):
    return {(f, v) for c in combos for f, v in zip(st.FACTOR_NAMES, c)}


def pairs_of(combos):
    return {p for c in combos for p in itertools.combinations(zip(st.FACTOR_NAMES, c), 2)}


@pytest.mark.parametrize("primitives", [[], ["sel-first3", "sel-last3", "tf-keep", "tf-rev"]])
def test_heldout_combinations_never_in_training_but_their_parts_are(primitives, tmp_path):
    suite = build_suite(SynthConfig(primitives=primitives, heldout=2 if primitives else 6))
    assert suite.heldout and suite.train
    train_names = set(suite.train_data)
    heldout_names = {st.task_name(c) for c in suite.heldout}
    assert not train_names & heldout_names
    # the file the trainer reads holds no held-out task, and no held-out target either
    path = st.write_jsonl(tmp_path / "train.jsonl", suite.train_data)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert {r["task"] for r in rows} == train_names
    for combo in suite.heldout:
        assert set(zip(st.FACTOR_NAMES, combo)) <= primitives_of(suite.train)
        assert set(itertools.combinations(zip(st.FACTOR_NAMES, combo), 2)) <= pairs_of(suite.train)
    # evaluation inputs are never training or shot inputs, for any task
    train_inputs = {e.input for ex in suite.train_data.values() for e in ex}
    shot_inputs = {e.input for ex in suite.shots.values() for e in ex}
    eval_inputs = {e.input for ex in suite.evaluation.values() for e in ex}
    assert not eval_inputs & (train_inputs | shot_inputs)


def test_check_split_rejects_leaks_and_uncovered_combinations():
    train, heldout = st.split_combinations(6, 0)
    with pytest.raises(AssertionError, match="in training"):
        st.check_split(train + heldout[:1], heldout)
    # drop every training combination that pairs first3 with keep: the pair is then unseen
    lonely = ("first3", "keep", "comma")
    bare = [c for c in st.all_combinations() if c[:2] != lonely[:2]]
    with pytest.raises(AssertionError, match="not in training"):
        st.check_split(bare, [lonely])


def test_tasks_do_what_their_names_say():
    assert st.apply(("last3", "sort", "comma"), "cafbe") == "b,e,f"
    assert st.apply(("odd", "upper", "space"), "cafbe") == "C F E"
    assert st.apply(("first3", "rev", "plain"), "cafbe") == "fac"
    name = st.task_name(("odd", "keep", "space"))
    assert name == "sel-odd.tf-keep.out-space"
    assert st.parse_task_name(name) == {"sel": "odd", "tf": "keep", "out": "space"}
    assert st.describe(("odd", "keep", "space")).startswith("Take every other letter")
    for bad in ("rte_a", "sel-odd.tf-keep", "sel-odd.tf-nope.out-space"):
        with pytest.raises(ValueError):
            st.parse_task_name(bad)


def test_generation_is_deterministic_and_seeded():
    a, b = build_suite(SynthConfig()), build_suite(SynthConfig())
    assert a == b
    c = build_suite(SynthConfig(split_seed=1))
    assert (c.heldout, c.train_data) != (a.heldout, a.train_data)


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="unknown primitive"):
        SynthConfig(primitives=["tf-shuffle"])
    with pytest.raises(ValueError, match="n_heldout"):
        build_suite(SynthConfig(heldout=36))
    with pytest.raises(ValueError, match="--preset"):
        SynthConfig(preset="huge")
    with pytest.raises(ValueError, match="--joint"):
        from ctr.config import TrainConfig
        TrainConfig.from_flags(stage=1, joint=True)


def test_quick_run_learns_training_tasks_and_search_beats_random(tmp_path):
    cfg = SynthConfig(preset="quick", seeds=[0], output_dir=str(tmp_path / "out"),
                      run_dir=str(tmp_path / "run"), permutations=20)
    res = run_synth(cfg)
    mean = res["summary"]["mean"]
    # chance is ~0: the input never names the task, so a code must select one of 30 behaviours
    # (measured on this CPU: own codes 0.75, search 0.33, random 0.01)
    assert mean["own_code"] >= 0.5, mean
    assert mean["bitwise_search"] > mean["random_code"] + 0.1, mean
    for name in ("results.json", "results.md", "code_factors.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "| **mean** |" in (tmp_path / "out" / "results.md").read_text()
    assert not list((tmp_path / "out").rglob("*.safetensors"))  # weights stay in run_dir
    records = (tmp_path / "out" / "metrics_seed0.jsonl").read_text().splitlines()
    assert json.loads(records[-1])["step"] == cfg.steps

    # ctr analyze reads the factors as labels
    rc = main(["analyze", str(tmp_path / "run" / "seed0" / "train"), "--factors-file",
               str(tmp_path / "run" / "factors.json"), "--permutations", "10",
               "--output-dir", str(tmp_path / "analysis")])
    assert rc == 0
    report = (tmp_path / "analysis" / "analysis.md").read_text()
    assert "## Association with factors" in report and "| tf |" in report
    for f in st.FACTOR_NAMES:
        assert (tmp_path / "analysis" / f"code_values_by_{f}.png").exists()


def test_factors_file_must_cover_every_task(tmp_path):
    from ctr.analysis.report import read_factors
    path = tmp_path / "factors.json"
    path.write_text(json.dumps({"a": {"sel": "odd", "tf": "rev"}, "b": {"sel": "first3"}}))
    assert read_factors(str(path), ["a"]) == {"sel": ["odd"], "tf": ["rev"]}
    with pytest.raises(ValueError, match="no factors"):
        read_factors(str(path), ["a", "c"])
    with pytest.raises(ValueError, match="do not have the factors"):
        read_factors(str(path), ["a", "b"])


def test_report_columns_are_the_heldout_methods():
    from ctr.experiments.synth import METHODS
    assert tuple(METHOD_TITLES) == METHODS[1:]  # results.md's columns, in summarize's order
