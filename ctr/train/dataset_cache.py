"""The training data cache: the raw Arrow table (`ctr.tasks.arrow_data`) and its token ids.

`ctr train` reads its data in two cached steps, each a folder under the cache root
(`--data-cache`, else $CTR_DATA_CACHE, else ~/.cache/ctr/data):

1. `raw-<key>`: the text of every source in one memory-mapped Arrow table, with the defect
   report and the task list (key: each data file's path, size and mtime, and the reading
   options). Needed before the model exists: the task names make the model.
2. `ids-<raw key>-<key>`: source and target ids of the selected tasks' examples, tokenised by
   `PromptEncoder.pairs` (the one place input + target become ids, as `encode_tasks`)
   with a batched `Dataset.map` (`--data-workers` processes), stored as uint16 when the
   vocabulary allows, else int32. Key: the raw key and the selected tasks' rows (a quick
   run on a few tasks tokenises only those), the tokenizer (a hash of its
   serialised vocabulary, merges and special tokens), the prompt format (adapter,
   delimiter, target EOS), --max-source-len and --max-target-len, and `IDS_VERSION`.

Both are written into a temporary folder and renamed into place (`fileio.atomic_dir`), so a
killed build leaves nothing half-made. With several processes the main one builds inside
Accelerate's `main_process_first` and the others then open what it built.

Sampling is `MixtureSampler`'s, unchanged: task k of the selection is the k-th run of
size_k rows of the ids table, with the sizes and example order of the in-memory loaders,
so a seed gives the same batches, and the same ids, as before.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctr.config import TrainConfig
from ctr.core.backbone import cache_root
from ctr.core.prompt_format import PromptEncoder
from ctr.fileio import atomic_dir, read_json, write_json
from ctr.tasks.arrow_data import RawSpec, RawTable, TableTask, open_raw, t0_spec, user_spec
from ctr.tasks.mixture import LoadReport, answer_report
from ctr.train.batching import Encoded

IDS_VERSION = 1  # bump when the tokenisation rule changes: every ids table is rebuilt
CACHE_ENV_VAR = "CTR_DATA_CACHE"
META = "meta.json"
BUILDS: Counter = Counter()  # ids tables built by this process (tests: a cache hit builds none)


def data_cache_root(cfg: TrainConfig) -> Path:
    if cfg.data_cache:
        return Path(cfg.data_cache).expanduser()
    return Path(os.environ.get(CACHE_ENV_VAR) or cache_root() / "data").expanduser()


def raw_spec(cfg: TrainConfig) -> RawSpec:
    if cfg.train_files:
        return user_spec(cfg.train_files, cfg.limit_examples)
    return t0_spec(cfg.data_dir, cfg.limit_examples)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what makes the tokenizer's ids: its class, its serialised pipeline
    (vocabulary, merges, normalizer, added tokens) or vocabulary, its special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = getattr(tokenizer, "special_tokens_map", {})
    h.update(json.dumps(specials, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _id_dtype(tokenizer) -> str:
    top = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1)
    return "uint16" if top <= 1 << 16 else "int32"


def _selection(tasks: list[TableTask]) -> list[tuple[int, int]]:
    return [(t.offset, t.size) for t in tasks]


def ids_identity(raw_key: str, tasks: list[TableTask], encoder: PromptEncoder,
                 max_source_len: int | None, max_target_len: int | None) -> dict[str, Any]:
    """Everything the ids depend on: the data and its selected tasks, the tokenizer, the
    prompt format and the lengths."""
    rows = hashlib.sha256(json.dumps(_selection(tasks)).encode()).hexdigest()[:20]
    return {"version": IDS_VERSION, "raw": raw_key, "rows": rows, "tasks": len(tasks),
            "tokenizer": tokenizer_fingerprint(encoder.tokenizer),
            "adapter": type(encoder.adapter).__name__, "delimiter": encoder.fmt.delimiter,
            "target_eos": encoder.fmt.target_eos, "source_suffix": encoder.source_suffix,
            "target_prefix": encoder.target_prefix, "eos": encoder.eos,
            "max_source_len": max_source_len, "max_target_len": max_target_len,
            "dtype": _id_dtype(encoder.tokenizer)}


class _Encode:
    """The batched `map` function (picklable, for several processes)."""

    def __init__(self, encoder: PromptEncoder, max_source_len: int | None, max_target_len: int | None):
        self.encoder, self.max_source_len, self.max_target_len = encoder, max_source_len, max_target_len

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pairs = self.encoder.pairs(batch["source"], [[t] for t in batch["target"]],
                                   self.max_source_len, self.max_target_len)
        return {"source_ids": [s for s, _ in pairs], "target_ids": [t[0] for _, t in pairs]}


def build_ids(raw: RawTable, tasks: list[TableTask], encoder: PromptEncoder, identity: dict[str, Any],
              out: Path, num_proc: int = 1, progress: bool = True) -> None:
    """Tokenise the examples of `tasks` (rows of `raw`), task after task, into `out`."""
    from datasets import Features, List, Value
    from datasets import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    BUILDS["ids"] += 1
    order = np.asarray(raw.order())
    order = np.concatenate([order[o:o + n] for o, n in _selection(tasks)] or [order[:0]])
    ds = raw.dataset().select_columns(["source", "target"]).select(order, keep_in_memory=True)
    dtype = identity["dtype"]
    features = Features({"source_ids": List(Value(dtype)), "target_ids": List(Value(dtype))})
    was_on = not are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        ids = ds.map(_Encode(encoder, identity["max_source_len"], identity["max_target_len"]),
                     batched=True, batch_size=1000, remove_columns=["source", "target"],
                     features=features, num_proc=num_proc if num_proc > 1 and len(ds) > 1 else None,
                     cache_file_name=str(out / "ids.arrow"), new_fingerprint=hashlib.sha256(
                         json.dumps(identity).encode()).hexdigest()[:16],
                     desc="tokenising")
    finally:
        if was_on and not progress:
            enable_progress_bars()
    files = [Path(f["filename"]).name for f in ids.cache_files] if len(ds) else []
    # the tokenizer's name is recorded, not keyed: stage 2 loads the same tokenizer from
    # its stage-1 checkpoint's folder and reuses stage 1's ids
    write_json(out / META, {**identity, "tokenizer_name": str(getattr(encoder.tokenizer, "name_or_path", "")),
                            "examples": len(ds), "arrow_files": files,
                            "sizes": [t.size for t in tasks]})


class TokenisedRows:
    """The ids of the selected tasks, memory-mapped: `rows(picks)` gives the `Encoded` rows
    of the sampler's (task, example) pairs, as `encoded[task][example]` did in memory."""

    def __init__(self, path: Path, tasks: list[TableTask], built_s: float | None = None):
        from datasets import Dataset, concatenate_datasets
        self.path, self.built_s = path, built_s
        self.meta = read_json(path / META)
        parts = [Dataset.from_file(str(path / f)) for f in self.meta["arrow_files"]]
        self.ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        self.sizes = [t.size for t in tasks]
        if self.meta["sizes"] != self.sizes:
            raise ValueError(f"{path}: holds tasks of sizes {self.meta['sizes']}, not {self.sizes}")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(int).tolist()

    def rows(self, picks: list[tuple[int, int]]) -> list[Encoded]:
        for t, i in picks:
            if not 0 <= i < self.sizes[t]:
                raise IndexError(f"example {i} of task {t} (size {self.sizes[t]})")
        cols = self.ds[[self.offsets[t] + i for t, i in picks]]
        return [Encoded(t, s, g) for (t, _), s, g in zip(picks, cols["source_ids"], cols["target_ids"])]


class InMemoryRows:
    """`encode_tasks`'s lists behind the same `sizes` / `rows(picks)` as `TokenisedRows`."""

    def __init__(self, encoded: list[list[Encoded]]):
        self.encoded = encoded
        self.sizes = [len(e) for e in encoded]

    def rows(self, picks: list[tuple[int, int]]) -> list[Encoded]:
        return [self.encoded[t][i] for t, i in picks]


def open_ids(raw: RawTable, tasks: list[TableTask], encoder: PromptEncoder, max_source_len: int | None,
             max_target_len: int | None, root: str | Path, num_proc: int = 1,
             progress: bool = True) -> TokenisedRows:
    """The ids of `tasks` (rows of `raw`) for this encoder and these lengths, built first when
    missing."""
    identity = ids_identity(raw.key, tasks, encoder, max_source_len, max_target_len)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(root).expanduser() / f"ids-{raw.key}-{key}"
    if (path / META).exists():
        return TokenisedRows(path, tasks)
    t0 = time.perf_counter()
    with atomic_dir(path) as tmp:
        build_ids(raw, tasks, encoder, identity, tmp, num_proc, progress)
    return TokenisedRows(path, tasks, built_s=time.perf_counter() - t0)


def _first(acc):
    return acc.main_process_first() if acc is not None else contextlib.nullcontext()


@dataclass
class TrainingData:
    """The selected tasks (examples on disk) and the raw table they come from."""

    tasks: list[TableTask]
    report: LoadReport
    raw: RawTable
    root: Path

    def tokenised(self, encoder: PromptEncoder, cfg: TrainConfig, acc=None) -> TokenisedRows:
        """Token ids of the selected tasks; built once, by the main process first."""
        main = acc is None or acc.is_main_process
        with _first(acc):
            rows = open_ids(self.raw, self.tasks, encoder, cfg.max_source_len, cfg.max_target_len,
                            self.root, cfg.data_workers, progress=main)
        if main:
            how = f"tokenised in {rows.built_s:.1f}s" if rows.built_s is not None else "cached"
            print(f"[ctr] token ids: {rows.path} ({how}, {rows.meta['dtype']})")
        return rows


def open_training_data(cfg: TrainConfig, acc=None, verbose: bool = True) -> TrainingData:
    """`ctr.tasks.mixture.load_tasks` through the Arrow cache: the same tasks, sizes and report."""
    root = data_cache_root(cfg)
    main = acc is None or acc.is_main_process
    with _first(acc):
        raw = open_raw(raw_spec(cfg), root, cfg.data_workers)
    tasks, report = raw.select(None if cfg.train_files else (cfg.tasks or None),
                               None if cfg.train_files else cfg.max_tasks,
                               None if cfg.train_files else cfg.tasks_per_type, cfg.drop_single_answer)
    if not tasks:
        raise ValueError("no training tasks left after loading (see the summary above)")
    if verbose and main:
        how = f"read in {raw.built_s:.1f}s" if raw.built_s is not None else "cached"
        print(f"[ctr] data: {raw.path} ({how}, {raw.meta['examples']} examples)")
        print(report.summary())
        print(answer_report(tasks, limit=12))
    return TrainingData(tasks, report, raw, root)
