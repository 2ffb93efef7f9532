"""Reading training data sources into Arrow rows (the first half of `ctr.tasks.arrow_data`).

Each line or row is parsed and checked as the in-memory loaders (`ctr.tasks.mixture`) do
(a bad line is an error naming file and line), its target cleaned (`clean_target`), and
written as (file, task, source, target, marker) into Arrow record batches, one stream file
per reading process (the format `datasets.Dataset.from_file` memory-maps). Sources:
- "t0": a file of the T0 folder (`prompt`, `completion`): one task named after the file;
  with a limit, reading stops after that many kept examples, as `load_t0_tasks` does;
- "jsonl" / "parquet": users' rows with `task`, `input`, `target`;
- "dataset": a `save_to_disk` export (P3-style: `inputs_pretokenized`,
  `targets_pretokenized`; or `input`, `target`[, `task`]), one task named after its folder.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ctr.tasks.mixture import _parse_line, clean_target, data_dir, read_manifest

RAW_VERSION = 1  # bump when the reading rules change: every raw table is rebuilt


@dataclass
class RawSpec:
    """What a raw table is made of: its sources, the reading option and their key."""

    kind: str  # "t0" or "user"
    sources: list[dict[str, Any]]  # {"kind", "path", "file"}
    limit_examples: int | None
    manifest: dict[str, dict[str, str]] | None = None
    stamp: list[Any] | None = None  # (path, size, mtime) of every file read

    def key(self) -> str:
        body = json.dumps([RAW_VERSION, self.kind, self.limit_examples, self.stamp], default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:20]


def _stamp(path: Path) -> list[Any]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def t0_spec(data_dir_arg: str | Path | None, limit_examples: int | None) -> RawSpec:
    root = data_dir(data_dir_arg)
    manifest = read_manifest(root)
    files = sorted((root / "t0_train").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{root / 't0_train'}: no .jsonl task files")
    sources = [{"kind": "t0", "path": str(f), "file": i} for i, f in enumerate(files)]
    stamp = [s for f in [*files, root / "t0_train_manifest.tsv"] for s in _stamp(f)]
    return RawSpec("t0", sources, limit_examples, manifest, stamp)


def _is_saved_dataset(path: Path) -> bool:
    return any((path / n).exists() for n in ("state.json", "dataset_dict.json"))


def user_spec(paths: list[str | Path], limit_examples: int | None) -> RawSpec:
    sources, stamp = [], []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such task file")
        if p.is_dir():
            exports = [p] if _is_saved_dataset(p) else sorted(d for d in p.iterdir() if d.is_dir()
                                                             and _is_saved_dataset(d))
            if not exports:
                raise FileNotFoundError(f"{p}: neither a `save_to_disk` export nor a folder of them")
            kinds = [("dataset", d) for d in exports]
        else:
            kinds = [("parquet" if p.suffix == ".parquet" else "jsonl", p)]
        for kind, q in kinds:
            sources.append({"kind": kind, "path": str(q.resolve()), "file": len(sources)})
            stamp += _stamp(q.resolve())
    return RawSpec("user", sources, limit_examples, None, stamp)


# ---- reading (in this process or in one of several readers) -----------------------------
def _row(file: int, task: str, source: str, target: str) -> tuple[int, str, str, str, bool]:
    """One line read: (file, task, source, cleaned target ("" when empty), marker stripped)."""
    cleaned, marker = clean_target(target)
    return file, task, source, cleaned, marker


def _t0_rows(path: Path, file: int, limit: int | None) -> Iterator[tuple]:
    kept = 0
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = _parse_line(path, lineno, line, ("prompt", "completion"))
            row = _row(file, path.stem, obj["prompt"], obj["completion"])
            yield row
            kept += bool(row[3])
            if limit and kept >= limit:  # as load_t0_tasks: stop reading the file
                break


def _user_rows(path: Path, file: int) -> Iterator[tuple]:
    keys = ("task", "input", "target")
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                obj = _parse_line(path, lineno, line, keys)
                yield _row(file, obj["task"], obj["input"], obj["target"])


def _checked(path: Path, n: int, obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    for k in keys:
        if not isinstance(obj.get(k), str):
            raise ValueError(f"{path}: row {n}: field {k!r} must be a string (missing or {type(obj.get(k)).__name__})")
    return obj


def _parquet_rows(path: Path, file: int) -> Iterator[tuple]:
    import pyarrow.parquet as pq
    keys = ("task", "input", "target")
    pf = pq.ParquetFile(path)
    missing = [k for k in keys if k not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    n = 0
    for batch in pf.iter_batches(columns=list(keys), batch_size=4096):
        for obj in batch.to_pylist():
            n += 1
            _checked(path, n, obj, keys)
            yield _row(file, obj["task"], obj["input"], obj["target"])


def _dataset_rows(path: Path, file: int) -> Iterator[tuple]:
    from datasets import DatasetDict, load_from_disk
    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise ValueError(f"{path}: a DatasetDict without a 'train' split ({list(ds)})")
        ds = ds["train"]
    cols = ds.column_names
    src, tgt = next(((s, t) for s, t in (("inputs_pretokenized", "targets_pretokenized"),
                                         ("input", "target")) if s in cols and t in cols), (None, None))
    if src is None:
        raise ValueError(f"{path}: needs columns inputs_pretokenized/targets_pretokenized (P3) "
                         f"or input/target, has {cols}")
    task_col = "task" if src == "input" and "task" in cols else None
    n = 0
    for batch in ds.select_columns([c for c in (src, tgt, task_col) if c]).iter(batch_size=1000):
        for i in range(len(batch[src])):
            n += 1
            obj = _checked(path, n, {k: v[i] for k, v in batch.items()}, (src, tgt))
            yield _row(file, obj[task_col] if task_col else path.name, obj[src], obj[tgt])


def _generate(sources: list[dict[str, Any]], limit: int | None = None) -> Iterator[tuple]:
    for s in sources:
        path, file = Path(s["path"]), s["file"]
        if s["kind"] == "t0":
            yield from _t0_rows(path, file, limit)
        elif s["kind"] == "parquet":
            yield from _parquet_rows(path, file)
        elif s["kind"] == "dataset":
            yield from _dataset_rows(path, file)
        else:
            yield from _user_rows(path, file)


COLUMNS = ("file", "task", "source", "target", "marker")
CHUNK = 20_000  # rows per Arrow record batch


def _write_shard(sources: list[dict[str, Any]], limit: int | None, path: str) -> int:
    """Rows of `sources` into one Arrow stream file (the format `datasets` memory-maps)."""
    import pyarrow as pa
    schema = pa.schema([("file", pa.int32()), ("task", pa.string()), ("source", pa.string()),
                        ("target", pa.string()), ("marker", pa.bool_())])
    cols: list[list[Any]] = [[] for _ in COLUMNS]
    n = 0
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        def flush() -> None:
            writer.write_batch(pa.record_batch([pa.array(c, t) for c, t in zip(cols, schema.types)],
                                               schema=schema))
            for c in cols:
                c.clear()
        for row in _generate(sources, limit):
            for c, v in zip(cols, row):
                c.append(v)
            n += 1
            if len(cols[0]) >= CHUNK:
                flush()
        if cols[0] or n == 0:
            flush()
    return n


def _shards(sources: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """`sources` cut into at most n contiguous groups of about equal bytes."""
    sizes = np.array([sum(f.stat().st_size for f in ([Path(s["path"])] if Path(s["path"]).is_file()
                                                     else Path(s["path"]).rglob("*.arrow")))
                      for s in sources], dtype=np.float64) + 1
    cuts = np.searchsorted(np.cumsum(sizes), np.arange(1, n) * sizes.sum() / n)
    groups = np.split(np.arange(len(sources)), np.unique(cuts))
    return [[sources[i] for i in g] for g in groups if len(g)]


def write_rows(spec: RawSpec, out: Path, num_proc: int) -> list[str]:
    """Write the rows of every source into out/rows-*.arrow; their names, in order."""
    groups = _shards(spec.sources, max(1, num_proc))
    names = [f"rows-{i:05d}.arrow" for i in range(len(groups))]
    if len(groups) == 1:
        _write_shard(groups[0], spec.limit_examples, str(out / names[0]))
        return names
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    # fork (as `datasets.map` does): the readers need no torch; spawn would re-run __main__
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(len(groups), mp_context=ctx) as pool:
        list(pool.map(_write_shard, groups, [spec.limit_examples] * len(groups),
                      [str(out / n) for n in names]))
    return names
