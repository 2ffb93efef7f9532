"""The tokenised data cache: the ids `encode_tasks` gives, the batches `MixtureSampler` gave,
built once and reused, rebuilt for another tokenizer or lengths; `ctr train` trains from it
exactly as from memory; `python -m ctr.bench.data` runs tiny."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from ctr.cli import main
from ctr.config import TrainConfig
from ctr.core.prompt_format import PromptEncoder, PromptFormat
from ctr.core.testing import char_tokenizer
from ctr.tasks.arrow_data import open_raw, t0_spec, user_spec
from ctr.tasks.mixture import load_jsonl_tasks, load_t0_tasks
from ctr.train import dataset_cache
from ctr.train.batching import MixtureSampler, encode_tasks
from ctr.train.dataset_cache import InMemoryRows, open_ids
from ctr.train.trainer import train


@pytest.fixture
def t0_root(tmp_path):
    from conftest import write_t0_folder
    return write_t0_folder(tmp_path / "data")


def _rows(t0_root, cache, encoder, max_source_len=24, max_target_len=4, workers=1, **select):
    raw = open_raw(t0_spec(t0_root, None), cache)
    tasks, _ = raw.select(**select)
    return open_ids(raw, tasks, encoder, max_source_len, max_target_len, cache, workers, progress=False)


@pytest.mark.parametrize("seq2seq,delimiter", [(False, "\n"), (False, " "), (True, "\n")])
def test_cached_ids_equal_encode_tasks(t0_root, tmp_path, seq2seq, delimiter):
    encoder = PromptEncoder(char_tokenizer(), PromptFormat(delimiter), seq2seq)
    rows = _rows(t0_root, tmp_path / "cache", encoder)
    tasks, _ = load_t0_tasks(t0_root)
    ref = encode_tasks(tasks, encoder, 24, 4)
    assert rows.sizes == [len(e) for e in ref] and rows.meta["dtype"] == "uint16"
    for t, enc in enumerate(ref):
        assert rows.rows([(t, i) for i in range(len(enc))]) == enc


def test_user_files_ids_equal_encode_tasks(tmp_path, task_file):
    encoder = PromptEncoder(char_tokenizer(), PromptFormat(), False)
    raw = open_raw(user_spec([task_file], 4), tmp_path / "cache")
    tasks, _ = raw.select()
    rows = open_ids(raw, tasks, encoder, 8, 3, tmp_path / "cache", progress=False)
    ref = encode_tasks(load_jsonl_tasks([task_file], limit_examples=4)[0], encoder, 8, 3)
    assert [rows.rows([(t, i) for i in range(n)]) for t, n in enumerate(rows.sizes)] == ref


@pytest.mark.parametrize("mode", ["proportional", "balanced"])
def test_sampling_gives_the_batches_it_gave_in_memory(t0_root, tmp_path, mode):
    encoder = PromptEncoder(char_tokenizer(), PromptFormat(), False)
    cached = _rows(t0_root, tmp_path / "cache", encoder, drop_single_answer=True)
    memory = InMemoryRows(encode_tasks(load_t0_tasks(t0_root, drop_single_answer=True)[0], encoder, 24, 4))
    sampler = MixtureSampler(cached.sizes, mode, cap=4, seed=3)
    assert cached.sizes == memory.sizes
    for step in (0, 1, 7, 1000):
        picks = sampler.batch(step, 16)
        assert cached.rows(picks) == memory.rows(picks)
    with pytest.raises(IndexError):
        cached.rows([(0, cached.sizes[0])])


def test_second_open_does_not_tokenise(t0_root, tmp_path, monkeypatch):
    encoder = PromptEncoder(char_tokenizer(), PromptFormat(), False)
    first = _rows(t0_root, tmp_path / "cache", encoder)
    builds = dict(dataset_cache.BUILDS)
    monkeypatch.setattr(PromptEncoder, "pairs", lambda *a, **k: pytest.fail("tokenised again"))
    again = _rows(t0_root, tmp_path / "cache", encoder)
    assert again.path == first.path and again.built_s is None and dict(dataset_cache.BUILDS) == builds
    assert again.rows([(0, 0), (1, 2)]) == first.rows([(0, 0), (1, 2)])


def test_ids_are_rebuilt_for_another_tokenizer_lengths_or_format(t0_root, tmp_path):
    cache = tmp_path / "cache"
    tok = char_tokenizer()
    base = _rows(t0_root, cache, PromptEncoder(tok, PromptFormat(), False))
    n = dataset_cache.BUILDS["ids"]
    other_tok = char_tokenizer()
    other_tok.add_tokens(["cat"])  # "cat" is one token now: other ids
    assert dataset_cache.tokenizer_fingerprint(other_tok) != dataset_cache.tokenizer_fingerprint(tok)
    variants = [_rows(t0_root, cache, PromptEncoder(other_tok, PromptFormat(), False)),
                _rows(t0_root, cache, PromptEncoder(tok, PromptFormat(), False), max_source_len=12),
                _rows(t0_root, cache, PromptEncoder(tok, PromptFormat(), False), max_target_len=2),
                _rows(t0_root, cache, PromptEncoder(tok, PromptFormat(" "), False)),
                _rows(t0_root, cache, PromptEncoder(tok, PromptFormat(), True))]
    assert len({base.path, *(v.path for v in variants)}) == 6 and dataset_cache.BUILDS["ids"] == n + 5
    assert variants[0].rows([(0, 0)]) != base.rows([(0, 0)])  # "Is cat a word?" has the new token
    assert _rows(t0_root, cache, PromptEncoder(char_tokenizer(), PromptFormat(), False)).path == base.path
    assert dataset_cache.BUILDS["ids"] == n + 5
    # the same tokenizer from another folder (stage 2 loads it from the stage-1 checkpoint)
    from transformers import AutoTokenizer
    for name in ("a", "b"):
        tok.save_pretrained(tmp_path / name)
    paths = {_rows(t0_root, cache, PromptEncoder(AutoTokenizer.from_pretrained(tmp_path / name),
                                                 PromptFormat(), False)).path for name in ("a", "b")}
    assert paths == {base.path} and dataset_cache.BUILDS["ids"] == n + 5
    # another task selection: only its examples are tokenised
    few = _rows(t0_root, cache, PromptEncoder(tok, PromptFormat(), False), tasks=["mono_tpl", "beta_tpl"])
    assert few.path != base.path and few.meta["examples"] == sum(few.sizes) == 8
    assert few.rows([(1, 0)]) == base.rows([(1, 0)])  # beta_tpl, its first example


def test_several_tokenising_processes_give_the_same_ids(t0_root, tmp_path):
    encoder = PromptEncoder(char_tokenizer(), PromptFormat(), False)
    one = _rows(t0_root, tmp_path / "c1", encoder)
    two = _rows(t0_root, tmp_path / "c2", encoder, workers=2)
    assert len(two.meta["arrow_files"]) == 2
    assert one.ds[:] == two.ds[:]


class FakeAccelerator:
    def __init__(self, main: bool):
        self.is_main_process, self.entered = main, 0

    @contextlib.contextmanager
    def main_process_first(self):
        self.entered += 1
        yield


def test_the_main_process_builds_and_the_others_open(tiny_paths, task_file, tmp_path, capsys):
    cfg = _cfg(tiny_paths, task_file, tmp_path / "run", data_cache=str(tmp_path / "cache"))
    encoder = PromptEncoder(char_tokenizer(), PromptFormat(), False)
    main_acc, other = FakeAccelerator(True), FakeAccelerator(False)
    builds = dict(dataset_cache.BUILDS)
    data = dataset_cache.open_training_data(cfg, main_acc)
    rows = data.tokenised(encoder, cfg, main_acc)
    assert main_acc.entered == 2 and dataset_cache.BUILDS["ids"] == builds.get("ids", 0) + 1
    assert "tasks read" in capsys.readouterr().out
    data2 = dataset_cache.open_training_data(cfg, other)  # after the main one: opens, prints nothing
    rows2 = data2.tokenised(encoder, cfg, other)
    assert other.entered == 2 and dataset_cache.BUILDS["ids"] == builds.get("ids", 0) + 1
    assert capsys.readouterr().out == "" and rows2.path == rows.path


def _cfg(tiny_paths, task_file, out, **kw):
    return TrainConfig.from_flags(output_dir=str(out), model=str(tiny_paths["llama"]), preset="tiny",
                                  train_files=[str(task_file)], max_source_len=32, max_target_len=8,
                                  code_length=3, codebook_size=8, save_every=3, **kw)


def test_trainer_trains_from_the_cache_as_from_memory(tiny_paths, task_file, tmp_path, capsys):
    cache = tmp_path / "cache"
    builds = (dataset_cache.BUILDS["ids"], )
    cached = train(_cfg(tiny_paths, task_file, tmp_path / "cached", data_cache=str(cache)))
    assert dataset_cache.BUILDS["ids"] == builds[0] + 1
    assert [p.name[:4] for p in sorted(cache.iterdir())] == ["ids-", "raw-"]
    assert "tasks read: 1 files, 18 examples kept" in capsys.readouterr().out  # the report stays
    memory = train(_cfg(tiny_paths, task_file, tmp_path / "memory", no_data_cache=True))
    a, b = load_file(str(cached / "ctr_weights.safetensors")), load_file(str(memory / "ctr_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # `ctr train --data-cache DIR` reuses what the first run built
    argv = ["train", "--output-dir", str(tmp_path / "cli"), "--model", str(tiny_paths["llama"]),
            "--preset", "tiny", "--train-files", str(task_file), "--max-source-len", "32",
            "--max-target-len", "8", "--code-length", "3", "--codebook-size", "8", "--steps", "2",
            "--data-cache", str(cache)]
    assert main(argv) == 0
    assert dataset_cache.BUILDS["ids"] == builds[0] + 1
    assert "token ids: " in capsys.readouterr().out
    with pytest.raises(ValueError, match="--no-data-cache reads JSON lines only"):
        _cfg(tiny_paths, tmp_path / "x.parquet", tmp_path / "bad", no_data_cache=True)


def test_default_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_DATA_CACHE", str(tmp_path / "env"))
    assert dataset_cache.data_cache_root(TrainConfig.from_flags(preset="tiny")) == tmp_path / "env"
    assert dataset_cache.data_cache_root(TrainConfig.from_flags(preset="tiny", data_cache=str(tmp_path))) == tmp_path
    monkeypatch.delenv("CTR_DATA_CACHE")
    monkeypatch.setenv("CTR_CACHE_DIR", str(tmp_path / "ctr"))
    assert dataset_cache.data_cache_root(TrainConfig.from_flags(preset="tiny")) == tmp_path / "ctr" / "data"


def test_bench_data_runs_tiny(tiny_paths, tmp_path, capsys):
    from ctr.bench.data import main as bench
    bench(["--examples", "400", "--task-files", "12", "--words", "3", "8", "--model",
           str(tiny_paths["llama"]), "--batches", "3", "--batch-size", "8", "--folder",
           str(tmp_path / "bench"), "--out", str(tmp_path / "bench.json"), "--in-process"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert list(fields) == ["examples", "build_s", "cached_load_s", "peak_rss_mb"]
    assert fields["examples"] == "400"
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["first"]["built"] and not result["second"]["built"]
    assert result["kept_examples"] < 400  # the empty file and the empty targets are skipped
