"""The raw Arrow table: the same tasks, examples and defect report as the in-memory loaders,
for the T0 folder, JSON lines, Parquet and saved (P3-style) datasets; built once, rebuilt
when a file or a reading option changes."""
from __future__ import annotations

import json
import os

import pytest

from ctr.tasks.arrow_data import BUILDS, open_raw, t0_spec, user_spec
from ctr.tasks.mixture import data_dir, load_jsonl_tasks, load_t0_tasks


def _same(raw, tasks, report, ref_tasks, ref_report):
    assert [(t.name, t.size, t.answer_counts, t.task_type, t.dataset, t.template) for t in tasks] == \
        [(t.name, len(t.examples), t.answer_counts, t.task_type, t.dataset, t.template) for t in ref_tasks]
    assert report == ref_report
    rows, order = raw.dataset(), raw.order()
    for t, ref in zip(tasks, ref_tasks):
        got = rows[[int(i) for i in order[t.offset:t.offset + t.size]]]
        assert got["source"] == [e.source for e in ref.examples]
        assert got["target"] == [e.target for e in ref.examples]


T0_OPTIONS = [{}, dict(drop_single_answer=True), dict(max_tasks=3), dict(tasks_per_type=1),
              dict(tasks=["mono_tpl", "alpha_tpl", "empty_tpl", "gamma_tpl"])]


@pytest.mark.parametrize("limit", [None, 2])
def test_t0_folder_table_equals_load_t0_tasks(tmp_path, limit):
    from conftest import write_t0_folder
    root = write_t0_folder(tmp_path / "data")
    raw = open_raw(t0_spec(root, limit), tmp_path / "cache")
    for opts in T0_OPTIONS:
        tasks, report = raw.select(**opts)
        ref_tasks, ref_report = load_t0_tasks(root, limit_examples=limit, **opts)
        _same(raw, tasks, report, ref_tasks, ref_report)
    _, report = raw.select()
    assert report.empty_files == ["empty_tpl"]
    # with a limit, reading stops at the limit, before zeta-b's last (empty) target
    assert report.empty_targets == {"gamma_tpl": 4, **({} if limit else {"zeta-b_tpl": 1})}
    with pytest.raises(ValueError, match="no_such"):
        raw.select(tasks=["no_such"])


def test_real_t0_sample_table_equals_load_t0_tasks(tmp_path):
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"T0 data not available: {e}")
    raw = open_raw(t0_spec(None, 3), tmp_path / "cache")
    for opts in [{}, dict(drop_single_answer=True, tasks_per_type=4), dict(max_tasks=40)]:
        _same(raw, *raw.select(**opts), *load_t0_tasks(limit_examples=3, **opts))


def _user_rows():
    return [{"task": "t1", "input": "x", "target": "yes<|endoftext|>"},
            {"task": "t2", "input": "z", "target": "no"},
            {"task": "t1", "input": "y", "target": ""},
            {"task": "t0", "input": "w", "target": " a "},
            {"task": "t1", "input": "v", "target": "yes"},
            {"task": "t2", "input": "u", "target": "maybe"},
            {"task": "t1", "input": "s", "target": "no"}]


@pytest.mark.parametrize("limit", [None, 1, 2])
def test_jsonl_table_equals_load_jsonl_tasks(tmp_path, task_file, limit):
    a = tmp_path / "a.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in _user_rows()) + "\n\n")
    (tmp_path / "empty.jsonl").write_text("")
    files = [a, tmp_path / "empty.jsonl", task_file]
    raw = open_raw(user_spec(files, limit), tmp_path / "cache")
    for drop in (False, True):
        tasks, report = raw.select(drop_single_answer=drop)
        _same(raw, tasks, report, *load_jsonl_tasks(files, drop, limit))


def test_parquet_and_saved_datasets_read_as_tasks(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict
    rows = _user_rows()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    p3 = tmp_path / "p3"  # P3 exports: one folder per (dataset, template), columns as in bigscience/P3
    Dataset.from_dict({"inputs_pretokenized": ["Is it good?\n", "Is it bad?\n"],
                       "targets_pretokenized": ["yes", "no\n"], "inputs": [[1, 2], [3]]}
                      ).save_to_disk(str(p3 / "sub_b"))
    DatasetDict({"train": Dataset.from_dict({"inputs_pretokenized": ["Q?"], "targets_pretokenized": [""]}),
                 "validation": Dataset.from_dict({"inputs_pretokenized": ["V?"], "targets_pretokenized": ["v"]})}
                ).save_to_disk(str(p3 / "sub_a"))
    raw = open_raw(user_spec([tmp_path / "rows.parquet", p3], None), tmp_path / "cache")
    tasks, report = raw.select()
    assert [(t.name, t.size) for t in tasks] == [("sub_b", 2), ("t0", 1), ("t1", 3), ("t2", 2)]
    assert report.empty_targets == {"t1": 1, "sub_a": 1} and report.empty_files == ["sub_a"]
    assert report.files == 3 and report.end_markers_stripped == 1
    ds, order = raw.dataset(), raw.order()
    assert ds[int(order[0])]["source"] == "Is it good?\n" and ds[int(order[1])]["target"] == "no"
    # the same rows as JSON lines give the same table
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    jl_tasks, jl_report = open_raw(user_spec([tmp_path / "rows.jsonl"], None), tmp_path / "cache").select()
    pq_tasks, pq_report = open_raw(user_spec([tmp_path / "rows.parquet"], None), tmp_path / "cache").select()
    assert [(t.name, t.size, t.answer_counts) for t in jl_tasks] == \
        [(t.name, t.size, t.answer_counts) for t in pq_tasks]
    with pytest.raises(FileNotFoundError, match="save_to_disk"):
        user_spec([tmp_path / "cache"], None)


def test_bad_lines_name_file_and_line_in_every_process(tmp_path, task_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "a", "input": "x", "target": "y"}\n{"task": "a", "input": 3, "target": "y"}\n')
    for workers in (1, 2):
        with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'input' must be a string"):
            open_raw(user_spec([task_file, bad], None), tmp_path / f"cache{workers}", workers)
        assert not [p for p in (tmp_path / f"cache{workers}").iterdir() if p.name.startswith("raw-")]


def test_parallel_reading_gives_the_same_table(tmp_path):
    from conftest import write_t0_folder
    root = write_t0_folder(tmp_path / "data")
    one = open_raw(t0_spec(root, None), tmp_path / "c1", 1)
    two = open_raw(t0_spec(root, None), tmp_path / "c2", 3)
    assert len(two.meta["arrow_files"]) > 1
    assert {k: v for k, v in one.meta.items() if k != "arrow_files"} == \
        {k: v for k, v in two.meta.items() if k != "arrow_files"}
    assert one.dataset()[:] == two.dataset()[:]


def test_table_is_built_once_and_rebuilt_when_data_or_options_change(tmp_path, task_file):
    cache = tmp_path / "cache"
    before = BUILDS["raw"]
    first = open_raw(user_spec([task_file], None), cache)
    assert first.built_s is not None and BUILDS["raw"] == before + 1
    again = open_raw(user_spec([task_file], None), cache)
    assert again.path == first.path and again.built_s is None and BUILDS["raw"] == before + 1
    limited = open_raw(user_spec([task_file], 2), cache)  # another reading option
    assert limited.path != first.path and BUILDS["raw"] == before + 2
    with open(task_file, "a") as f:  # the data changes
        f.write(json.dumps({"task": "task9", "input": "new", "target": "row"}) + "\n")
    changed = open_raw(user_spec([task_file], None), cache)
    assert changed.path != first.path and BUILDS["raw"] == before + 3
    assert "task9" in [t.name for t in changed.select()[0]]
    st = task_file.stat()  # same size, new mtime: rebuilt too
    os.utime(task_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert open_raw(user_spec([task_file], None), cache).path != changed.path
