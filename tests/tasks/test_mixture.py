"""Task loading (real T0 sample and user JSONL), mixing, collation."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from ctr.train.batching import Encoded, MixtureSampler, collate
from ctr.tasks.mixture import data_dir, load_jsonl_tasks, load_t0_tasks


def _t0_root():
    try:
        return data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"T0 data not available: {e}")


def test_real_t0_sample_defects_are_counted_not_fatal():
    _t0_root()
    tasks, report = load_t0_tasks()
    assert report.files == 294
    assert len(report.empty_files) == 11  # the README's 11 empty files
    assert sum(report.empty_targets.values()) == 1400  # all TREC completions are empty
    assert report.end_markers_stripped > 50000
    assert all("<|endoftext|>" not in e.target for t in tasks for e in t.examples)
    assert len(tasks) == 276
    types = Counter(t.task_type for t in tasks)
    assert len(types) == 8 and "unknown" not in types
    singles = [t.name for t in tasks if t.single_answer]
    assert len(singles) == 25 and all(n.split("_")[0] in ("imdb", "rotten", "dbpedia") for n in singles)
    kept, rep = load_t0_tasks(drop_single_answer=True)
    assert len(kept) == 251 and len(rep.dropped_single_answer) == 25
    assert "single-answer tasks dropped" in rep.summary()


def test_t0_task_selection_errors_name_the_task():
    _t0_root()
    with pytest.raises(ValueError, match="no_such_task"):
        load_t0_tasks(tasks=["no_such_task"])


def test_missing_data_dir_names_path_and_variable(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="CTR_DATA_DIR"):
        load_t0_tasks(tmp_path / "missing")
    (tmp_path / "d" / "t0_train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="t0_train_manifest.tsv"):
        load_t0_tasks(tmp_path / "d")


def test_jsonl_tasks_handle_empty_targets_markers_and_bad_lines(tmp_path):
    good = tmp_path / "a.jsonl"
    rows = [{"task": "t1", "input": "x", "target": "yes<|endoftext|>"},
            {"task": "t1", "input": "y", "target": ""},
            {"task": "t2", "input": "z", "target": "no", "choices": ["yes", "no"]}]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "empty.jsonl").write_text("")
    tasks, report = load_jsonl_tasks([good, tmp_path / "empty.jsonl"])
    assert [t.name for t in tasks] == ["t1", "t2"]
    assert tasks[0].examples[0].target == "yes" and tasks[1].examples[0].choices == ["yes", "no"]
    assert report.empty_targets["t1"] == 1 and report.end_markers_stripped == 1
    assert report.empty_files == ["empty.jsonl"]
    for line, msg in [('{"task": "t", "input": "x"}', "missing field"),
                      ('{"task": "t", "input": "x", "target": 3}', "must be a string"),
                      ('{"task": "t", "input": "x", "target": "y", "choices": "no"}', "choices"),
                      ('[1, 2]', "JSON object"), ('{"task": ', "malformed JSON")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(rows[0]) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=f"{bad}:2: .*{msg}"):
            load_jsonl_tasks([bad])


def test_mixture_sampler_is_deterministic_and_follows_the_mode():
    sizes = [1000, 10, 10]
    prop = MixtureSampler(sizes, "proportional", cap=100, seed=3)
    assert prop.batch(7, 16) == MixtureSampler(sizes, "proportional", cap=100, seed=3).batch(7, 16)
    assert prop.batch(7, 16) != prop.batch(8, 16)
    draws = Counter(t for s in range(200) for t, _ in prop.batch(s, 32))
    share = draws[0] / sum(draws.values())
    assert abs(share - 100 / 120) < 0.03  # capped at 100: 100 / (100 + 10 + 10)
    bal = MixtureSampler(sizes, "balanced", seed=3)
    draws = Counter(t for s in range(200) for t, _ in bal.batch(s, 32))
    assert all(abs(draws[t] / 6400 - 1 / 3) < 0.03 for t in range(3))
    assert all(i < 10 for s in range(50) for t, i in bal.batch(s, 8) if t > 0)


@pytest.mark.parametrize("seq2seq", [False, True])
def test_collate_masks_and_labels(seq2seq):
    rows = [Encoded(0, [5, 6, 7], [8, 1]), Encoded(1, [5], [9, 10, 1])]
    for side in ("right", "left"):
        b = collate(rows, 0, seq2seq, side)
        assert b["task_ids"].tolist() == [0, 1]
        if seq2seq:
            assert b["labels"].tolist() == [[8, 1, -100], [9, 10, 1]]  # decoder side: right padded
            assert b["attention_mask"].sum(1).tolist() == [3, 1]
        else:
            assert b["attention_mask"].sum(1).tolist() == [5, 4]
            tgt = [row[row != -100].tolist() for row in b["labels"]]
            assert tgt == [[8, 1], [9, 10, 1]]


def test_the_near20_mixture_is_the_released_codebooks_and_loads(capsys):
    from pathlib import Path
    from ctr.tasks.named_mixtures import NEAR20, main, mixture
    root = Path(__file__).resolve().parents[2]
    released = json.loads((root / "checkpoints/smollm2-near20-s1/train_config.json").read_text())["tasks"]
    assert list(NEAR20) == released  # same names, same order: the same task ids
    assert [t.split("_")[0] for t in NEAR20].count("amazon") == 9 and len(set(NEAR20)) == 20
    main(["near20"])
    assert capsys.readouterr().out.split() == list(NEAR20)  # what shell scripts read
    with pytest.raises(ValueError, match="unknown mixture 'near21'; known: near20"):
        mixture("near21")
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"data not available: {e}")
    from ctr.config import MixtureOptions
    from ctr.tasks.mixture import load_tasks
    tasks = load_tasks(MixtureOptions(tasks=mixture("near20"), limit_examples=2))
    assert [t.name for t in tasks] == list(NEAR20)
    assert {t.task_type for t in tasks} == {"sentiment", "topic_classification", "paraphrase_identification"}
