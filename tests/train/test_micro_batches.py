"""Length-grouped micro-batches: a partition of the process's rows, less padding, and the
same loss and gradients as one forward pass over the whole global batch."""
from __future__ import annotations

import json
import random

import pytest
import torch

from ctr.config import TrainConfig
from ctr.core.adapter import DecoderOnlyAdapter, Seq2SeqAdapter
from ctr.train.batching import Encoded, micro_batches
from ctr.train.trainer import train


def rows_of(lengths: list[tuple[int, int]]) -> list[Encoded]:
    return [Encoded(i % 3, [5] * s, [6] * t) for i, (s, t) in enumerate(lengths)]


def test_padded_tokens_follow_each_layout():
    lengths = [(5, 2), (1, 7)]
    assert DecoderOnlyAdapter().padded_tokens(lengths) == 2 * 8  # one sequence: max(s + t)
    assert Seq2SeqAdapter().padded_tokens(lengths) == 2 * (5 + 7)  # encoder + decoder maxima
    assert DecoderOnlyAdapter().padded_tokens([]) == 0


@pytest.mark.parametrize("adapter", [DecoderOnlyAdapter(), Seq2SeqAdapter()])
@pytest.mark.parametrize("by_length,max_tokens", [(True, None), (False, None), (True, 60), (False, 60)])
def test_micro_batches_partition_the_rows_within_both_caps(adapter, by_length, max_tokens):
    rnd = random.Random(0)
    rows = rows_of([(rnd.randint(1, 40), rnd.randint(1, 8)) for _ in range(24)])
    chunks = micro_batches(rows, 4, adapter, by_length, max_tokens)
    flat = [r for c in chunks for r in c]
    assert sorted(map(id, flat)) == sorted(map(id, rows))  # every row once
    assert all(1 <= len(c) <= 4 for c in chunks)
    lens = [len(r.source) + len(r.target) for r in flat]
    if by_length:
        assert lens == sorted(lens, reverse=True)
    else:
        assert flat == rows  # sampled order kept
    if max_tokens:
        pads = [(adapter.padded_tokens([(len(r.source), len(r.target)) for r in c]), len(c))
                for c in chunks]
        assert all(p <= max_tokens or n == 1 for p, n in pads)
        assert any(n < 4 for _, n in pads)  # the budget did close some passes early
    else:
        assert [len(c) for c in chunks] == [4] * 6


def test_grouping_pads_less_than_the_sampled_order():
    rnd = random.Random(1)
    rows = rows_of([(rnd.randint(1, 120), rnd.randint(1, 8)) for _ in range(64)])
    ad = DecoderOnlyAdapter()
    padded = {g: sum(ad.padded_tokens([(len(r.source), len(r.target)) for r in c])
                     for c in micro_batches(rows, 8, ad, g)) for g in (True, False)}
    assert padded[True] < 0.8 * padded[False]


def test_micro_batch_flags_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--micro-batch-tokens"):
        TrainConfig.from_flags(output_dir=str(tmp_path), micro_batch_tokens=0)
    with pytest.raises(ValueError, match="--micro-batch-size"):
        micro_batches(rows_of([(1, 1)]), 0, DecoderOnlyAdapter())
    with pytest.raises(ValueError, match="--micro-batch-tokens with --dead-code-threshold"):
        TrainConfig.from_flags(output_dir=str(tmp_path), micro_batch_tokens=512, dead_code_threshold=0.5,
                               quantize_all_tasks=False)
    # every task quantised: usage is counted once per optimizer step, whatever the passes
    TrainConfig.from_flags(output_dir=str(tmp_path), micro_batch_tokens=512, dead_code_threshold=0.5,
                           quantize_all_tasks=True)


def varied_tasks(path):
    """Rows from 3 to ~60 tokens (the char tokenizer): grouping reorders them."""
    rnd = random.Random(2)
    with open(path, "w") as f:
        for t in range(3):
            for i in range(8):
                w = "".join(rnd.choice("abcdefgh") for _ in range(rnd.randint(1, 50)))
                f.write(json.dumps({"task": f"task{t}", "input": f"w: {w}",
                                    "target": [w[:4].upper(), w[::-1][:6], w[:2]][t]}) + "\n")
    return path


def first_step(tiny_paths, tasks, out, arch, **kw):
    """Loss record and accumulated gradients (before clipping) of training step 0."""
    grads: dict[str, torch.Tensor] = {}

    def keep(step, core):
        grads.update({n: p.grad.detach().clone() for n, p in core.named_parameters()
                      if p.grad is not None})
    cfg = TrainConfig.from_flags(output_dir=str(out), model=str(tiny_paths[arch]), preset="tiny",
                                 train_files=[str(tasks)], max_source_len=64, max_target_len=8, code_length=3,
                                 codebook_size=8, batch_size=8, **kw)
    train(cfg, stop_after=1, hooks={"before_update": keep})
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return record, grads


@pytest.mark.parametrize("arch,stage", [("llama", 1), ("t5", 1), ("llama", 2)])
def test_grouped_micro_batches_give_the_one_pass_loss_and_gradients(tiny_paths, tmp_path, arch, stage):
    tasks = varied_tasks(tmp_path / "tasks.jsonl")
    extra = dict(stage=2, joint=True) if stage == 2 else {}
    run = lambda name, **kw: first_step(tiny_paths, tasks, tmp_path / name, arch, **extra, **kw)
    ref_record, ref = run("one_pass", micro_batch_size=8, group_by_length=False)
    assert any(g.abs().sum() > 0 for g in ref.values())
    if stage == 2:
        assert any(n.startswith("backbone.") for n in ref)
    for name, kw in {"sampled": dict(micro_batch_size=2, group_by_length=False),
                     "grouped": dict(micro_batch_size=2),
                     # passes of unequal sizes: the VQ loss must still be the global row mean
                     "token_budget": dict(micro_batch_size=8, micro_batch_tokens=120)}.items():
        record, got = run(name, **kw)
        for key in ("loss", "lm_loss", "vq_loss"):
            assert record[key] == pytest.approx(ref_record[key], rel=1e-5, abs=1e-7), (name, key)
        assert got.keys() == ref.keys()
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-5, msg=f"{name}: {n}")


def test_throughput_benchmark_times_every_layout_on_the_same_batches(tiny_paths, tmp_path, capsys):
    from conftest import write_t0_folder
    from ctr.bench.train import main
    data = write_t0_folder(tmp_path / "data")
    out = tmp_path / "throughput.json"
    main(["--throughput", "--model", str(tiny_paths["llama"]), "--data-dir", str(data),
          "--batch", "8", "--micro", "4", "--max-source-len", "32", "--max-target-len", "8",
          "--tiny-steps", "2", "--pack-multiple", "8", "--out", str(out)])
    result = json.loads(out.read_text())
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"tokens_per_s={result['tokens_per_s']} mfu=na "
                    f"grouped_speedup={result['grouped_speedup']} "
                    f"padded_per_token={result['padded_per_token']['packed']} "
                    f"host_overhead={result['host_overhead']['ratio']}")
    assert result["timed_steps_per_variant"] == 2 * 2  # two runs of two timed steps
    assert result["real_tokens"] > 0 and result["tokens_per_s"] > 0
    pad = result["padded_positions"]
    # same rows: packing pads only the end of each pass, grouping less than the sampled order
    assert result["real_tokens"] <= pad["packed"] < pad["grouped"] < pad["sampled"]
    overhead = result["host_overhead"]
    assert overhead["trainer_s"] > 0 and overhead["bare_s"] > 0
    # the ratio (3 decimals) of the unrounded times, which are stored rounded to 4 decimals:
    # it lies between the ratios those roundings allow
    t, b, r = overhead["trainer_s"], overhead["bare_s"], 5e-5
    assert (t - r) / (b + r) - 5e-4 <= overhead["ratio"] <= (t + r) / (b - r) + 5e-4


def test_split_passes_halves_the_largest_until_there_are_n():
    from ctr.train.batching import split_passes
    rows = rows_of([(5, 1)] * 7)
    passes = [rows[:4], rows[4:6], rows[6:]]
    out = split_passes(passes, 5)
    assert [len(p) for p in out] == [1, 1, 2, 2, 1]  # 4 -> 2 + 2 -> (1 + 1) + 2 ...
    assert [r for p in out for r in p] == rows  # same rows, same order
    assert split_passes(passes, 3) == passes
    with pytest.raises(ValueError, match="cannot make 8 forward passes of 7 rows"):
        split_passes(passes, 8)
