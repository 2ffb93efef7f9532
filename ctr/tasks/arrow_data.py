"""Training data at P3 scale: every source read once into a memory-mapped Arrow table.

Sources (read by `ctr.tasks.arrow_read`, one Arrow shard per reading process, memory-mapped
by `datasets.Dataset.from_file`):
- the T0 sample folder (`t0_train/*.jsonl` and its manifest): one task per file, as
  `mixture.load_t0_tasks` reads it;
- users' files, as `mixture.load_jsonl_tasks` reads them: JSON lines or Parquet
  (`.parquet`) with `task`, `input`, `target` columns, and P3-style folders: a
  `save_to_disk` export (a Dataset, or a DatasetDict with a `train` split), or a folder of
  them, one task per export named after its folder, with P3's `inputs_pretokenized` /
  `targets_pretokenized` columns (or `input` / `target`). Answer choices are not kept
  (training does not read them).

The table holds every line read, in reading order (cleaned target, "" when it was empty),
so the defect report of the in-memory loaders (empty files, empty targets, `<|endoftext|>`
markers, answer distributions, single-answer tasks) is computed from it once and stored in
`meta.json`; `order.npy` lists the kept rows task by task (tasks in the in-memory loaders'
order, examples in reading order), so task k is positions [offset, offset + size) of that
list, exactly the examples, in the order, that the in-memory loaders give. The folder is
keyed by the data (each file's path, size and mtime), the reading options and
`RAW_VERSION`: it is built once and reused until a file changes. Task selection (--tasks,
--max-tasks, --tasks-per-type, --drop-single-answer) is applied to the stored metadata.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctr.fileio import atomic_dir, read_json, write_json
from ctr.tasks.arrow_read import RAW_VERSION, RawSpec, t0_spec, user_spec, write_rows
from ctr.tasks.mixture import FEW_ANSWERS, LoadReport, Task, spread_over_types

__all__ = ["BUILDS", "RawSpec", "RawTable", "TableTask", "build_raw", "open_raw", "t0_spec", "user_spec"]

META = "meta.json"
ORDER = "order.npy"
BUILDS: Counter = Counter()  # tables built by this process (tests: a cache hit builds none)


@dataclass
class TableTask(Task):
    """A task whose examples are positions [offset, offset + size) of the table's order
    (the examples stay on disk: `examples` is empty)."""

    offset: int = 0
    size: int = 0


# ---- the table's metadata: defect report, tasks and their order -----------------------
def _codes(column) -> tuple[np.ndarray, list[str]]:
    import pyarrow.compute as pc
    values = column.unique()
    return pc.index_in(column, value_set=values).to_numpy().astype(np.int64), values.to_pylist()


def _answer_counts(targets: np.ndarray, names: list[str]) -> dict[str, int] | None:
    """As `Counter(...).most_common()` over a task's targets: count down, ties by first use."""
    uniq, first, counts = np.unique(targets, return_index=True, return_counts=True)
    if len(uniq) > FEW_ANSWERS:
        return None
    ranked = sorted(zip(-counts, first, uniq))
    return {names[u]: int(-c) for c, _, u in ranked}


def _describe(spec: RawSpec, table) -> tuple[dict[str, Any], np.ndarray]:
    """meta.json's content and the kept rows' order, from the columns of the whole table."""
    n_files = len(spec.sources)
    file = table.column("file").to_numpy().astype(np.int64)
    target_codes, target_names = _codes(table.column("target"))
    empty = np.array([t == "" for t in target_names] + [False], dtype=bool)[target_codes]
    markers = np.bincount(file, weights=table.column("marker").to_numpy().astype(np.float64),
                          minlength=n_files)
    if spec.kind == "t0":  # one task per file, in file order
        names = [Path(s["path"]).stem for s in spec.sources]
        task_rank = file
    else:  # tasks named in the rows, in name order
        task_codes, task_names = _codes(table.column("task"))
        names = sorted(task_names)
        index = {n: i for i, n in enumerate(names)}
        task_rank = np.array([index[n] for n in task_names] + [0], dtype=np.int64)[task_codes]
    kept = np.flatnonzero(~empty)
    by_task = kept[np.argsort(task_rank[kept], kind="stable")]  # tasks in name order, lines in order
    sizes = np.bincount(task_rank[by_task], minlength=len(names))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    if spec.kind == "user" and spec.limit_examples:  # the first N kept examples of each task
        pos = np.arange(len(by_task)) - starts[task_rank[by_task]]
        by_task = by_task[pos < spec.limit_examples]
        sizes = np.minimum(sizes, spec.limit_examples)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    empties = np.bincount(task_rank[empty], minlength=len(names))
    tasks = [{"name": n, "offset": int(o), "size": int(s), "empty_targets": int(e),
              "answer_counts": _answer_counts(target_codes[by_task[o:o + s]], target_names) if s else None}
             for n, o, s, e in zip(names, starts, sizes, empties)]
    files = [{"name": Path(s["path"]).name, "stem": Path(s["path"]).stem, "markers": int(m),
              "examples": int(n)}
             for s, m, n in zip(spec.sources, markers, np.bincount(file[by_task], minlength=n_files))]
    meta = {"version": RAW_VERSION, "kind": spec.kind, "limit_examples": spec.limit_examples,
            "rows": int(len(file)), "examples": int(len(by_task)), "stamp": spec.stamp,
            "manifest": spec.manifest, "files": files, "tasks": tasks}
    return meta, by_task


def build_raw(spec: RawSpec, out: Path, num_proc: int = 1) -> None:
    """Read every source into `out`: rows-*.arrow, order.npy and meta.json."""
    import pyarrow as pa
    BUILDS["raw"] += 1
    names = write_rows(spec, out, num_proc)
    table = pa.concat_tables([pa.ipc.open_stream(pa.memory_map(str(out / n))).read_all() for n in names])
    meta, order = _describe(spec, table)
    del table
    meta["arrow_files"] = names
    np.save(out / ORDER, order.astype(np.int64))
    write_json(out / META, meta)


class RawTable:
    """A built raw table: its metadata, its kept-row order and (on demand) its text rows."""

    def __init__(self, path: Path, built_s: float | None = None):
        self.path, self.built_s = path, built_s
        self.meta = read_json(path / META)
        self.key = path.name.removeprefix("raw-")

    def order(self) -> np.ndarray:
        return np.load(self.path / ORDER, mmap_mode="r")

    def dataset(self):
        """The rows as one memory-mapped `datasets.Dataset` (reading order, every line)."""
        from datasets import Dataset, concatenate_datasets
        parts = [Dataset.from_file(str(self.path / f)) for f in self.meta["arrow_files"]]
        return parts[0] if len(parts) == 1 else concatenate_datasets(parts)

    def select(self, tasks: list[str] | None = None, max_tasks: int | None = None,
               tasks_per_type: int | None = None, drop_single_answer: bool = False
               ) -> tuple[list[TableTask], LoadReport]:
        """The tasks and report `load_t0_tasks` / `load_jsonl_tasks` give for these options."""
        if self.meta["kind"] == "t0":
            return self._select_t0(tasks, max_tasks, tasks_per_type, drop_single_answer)
        report = LoadReport(files=len(self.meta["files"]))
        for f in self.meta["files"]:
            report.end_markers_stripped += f["markers"]
            if f["examples"] == 0:
                report.empty_files.append(f["name"])
        out = []
        for t in self.meta["tasks"]:
            if t["empty_targets"]:
                report.empty_targets[t["name"]] += t["empty_targets"]
            if not t["size"]:
                continue
            task = self._task(t)
            if drop_single_answer and task.single_answer:
                report.dropped_single_answer.append(task.name)
                continue
            report.examples += task.size
            out.append(task)
        return out, report

    def _task(self, t: dict[str, Any], row: dict[str, str] | None = None) -> TableTask:
        row = row or {}
        return TableTask(t["name"], [], task_type=row.get("task_type", "unknown"),
                         dataset=row.get("dataset", ""), template=row.get("template", ""),
                         answer_counts=t["answer_counts"], offset=t["offset"], size=t["size"])

    def _select_t0(self, names, max_tasks, tasks_per_type, drop_single_answer):
        files = self.meta["files"]
        by_stem = {f["stem"]: (f, t) for f, t in zip(files, self.meta["tasks"])}
        if names:
            unknown = [t for t in names if t not in by_stem]
            if unknown:
                raise ValueError(f"unknown T0 tasks {unknown}; names are file stems of the t0_train folder")
            chosen = [by_stem[t] for t in names]
        else:
            chosen = list(zip(files, self.meta["tasks"]))
        if max_tasks:
            chosen = chosen[:max_tasks]
        report, out = LoadReport(), []
        manifest = self.meta["manifest"] or {}
        for f, t in chosen:
            report.files += 1
            report.end_markers_stripped += f["markers"]
            if t["empty_targets"]:
                report.empty_targets[f["stem"]] += t["empty_targets"]
            if not t["size"]:
                if not t["empty_targets"]:
                    report.empty_files.append(f["stem"])
                continue
            task = self._task(t, manifest.get(f["name"]))
            if drop_single_answer and task.single_answer:
                report.dropped_single_answer.append(task.name)
                continue
            report.examples += task.size
            out.append(task)
        if tasks_per_type:
            out = spread_over_types(out, tasks_per_type)
            report.examples = sum(t.size for t in out)
        return out, report


def open_raw(spec: RawSpec, cache_root: str | Path, num_proc: int = 1) -> RawTable:
    """The raw table of `spec` under `cache_root`, built first when it is not there."""
    path = Path(cache_root).expanduser() / f"raw-{spec.key()}"
    if (path / META).exists():
        return RawTable(path)
    t0 = time.perf_counter()
    with atomic_dir(path) as tmp:
        build_raw(spec, tmp, num_proc)
    return RawTable(path, built_s=time.perf_counter() - t0)
