"""The training step without avoidable host work: packed passes train the padded model,
steps that do not log read nothing back from the device, batches prepared ahead change
nothing, and divergence is still caught and named."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from ctr.config import TrainConfig
from ctr.train.trainer import TrainingDiverged, train
from test_micro_batches import first_step, varied_tasks


@pytest.mark.parametrize("stage,micro", [(1, 8), (1, 2), (2, 4)])
def test_packed_passes_give_the_padded_loss_and_gradients(tiny_paths, tmp_path, stage, micro):
    """Mixed tasks (so mixed codes) and lengths from 3 to ~60 tokens in each pass."""
    tasks = varied_tasks(tmp_path / "tasks.jsonl")
    extra = dict(stage=2, joint=True) if stage == 2 else {}
    run = lambda name, **kw: first_step(tiny_paths, tasks, tmp_path / name, "llama",
                                        micro_batch_size=micro, **extra, **kw)
    ref_record, ref = run("padded", packing="no")
    record, got = run("packed", packing="yes")
    assert json.loads((tmp_path / "packed" / "resolved_config.json").read_text())["packing"] == "yes"
    for key in ("loss", "lm_loss", "vq_loss"):
        assert record[key] == pytest.approx(ref_record[key], rel=1e-5, abs=1e-7), key
    assert got.keys() == ref.keys() and any(n.startswith("backbone.") for n in ref) == (stage == 2)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-5, msg=n)


def test_the_run_says_whether_it_packs(tiny_paths, task_file, tmp_path, capsys):
    for arch, line in (("llama", "packing: on"), ("t5", "packing: off (an encoder-decoder backbone")):
        cfg = TrainConfig.from_flags(output_dir=str(tmp_path / arch), model=str(tiny_paths[arch]), preset="tiny",
                                     train_files=[str(task_file)], code_length=3, codebook_size=8, steps=1)
        train(cfg)
        assert line in capsys.readouterr().out
    with pytest.raises(ValueError, match="--packing yes"):
        train(TrainConfig.from_flags(output_dir=str(tmp_path / "x"), model=str(tiny_paths["t5"]), preset="tiny",
                                     train_files=[str(task_file)], code_length=3, codebook_size=8, packing="yes"))


class HostReads(TorchDispatchMode):
    """Counts the operations that make the host wait for a GPU: reading a value
    (`.item()`, `float(t)`, `bool(t)`, `.tolist()`, `.cpu()`) and ops whose output size
    depends on the values (`nonzero`, boolean-mask indexing, `masked_select`, ...). On the
    CPU nothing waits, but the same calls would."""

    OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique_dim",
           "aten::_unique2", "aten::equal", "aten::is_nonzero", "aten::allclose", "aten::bincount"}

    def __init__(self):
        super().__init__()
        self.count, self.on, self.seen = 0, True, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        no_size = name == "aten::repeat_interleave" and "output_size" not in (kwargs or {})
        if self.on and (name in self.OPS or bool_index or no_size):
            self.count += 1
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def host_reads_per_step(tiny_paths, task_file, out, monkeypatch, **kw):
    cfg = TrainConfig.from_flags(output_dir=str(out), model=str(tiny_paths["llama"]), preset="tiny",
                                 train_files=[str(task_file)], code_length=3, codebook_size=8, steps=7,
                                 log_every=3, save_every=100, fused_adamw="yes", **kw)  # as on a GPU:
    # the for-loop AdamW reads its step count, a host tensor there, from a CPU tensor here
    reads, at_start = HostReads(), {}
    for name in ("tolist", "cpu", "numpy"):  # host copies that do not dispatch on a CPU tensor
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            if reads.on:
                reads.count += 1
                reads.seen.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)

    def step_start(step, rows):
        at_start.setdefault(step, reads.count)

    def uncounted_usage_update(step, core):
        # the plain quantizer's usage update reads back once per step (ctr/core/quantizer.py,
        # end_step): counted apart from the trainer's own reads
        if core.config.use_codes and not hasattr(core.quantizer, "_counted"):
            end_step = core.quantizer.end_step

            def quiet(*a, **k):
                reads.on = False
                try:
                    return end_step(*a, **k)
                finally:
                    reads.on = True
            core.quantizer.end_step, core.quantizer._counted = quiet, True
    with reads:
        train(cfg, stop_after=6, hooks={"micro_batch": step_start, "before_update": uncounted_usage_update})
    return [at_start[s + 1] - at_start[s] for s in range(5)]  # steps 0-4 (step 5 ends the call)


@pytest.mark.parametrize("options", [dict(), dict(stage=2, no_codes=True)],
                         ids=["stage1-codes", "stage2-no-codes"])
def test_steps_that_do_not_log_read_nothing_from_the_device(tiny_paths, task_file, tmp_path,
                                                            monkeypatch, options):
    per_step = host_reads_per_step(tiny_paths, task_file, tmp_path / "run", monkeypatch, **options)
    logged = {2}  # done = 3 (step 5, done = 6, ends the call)
    assert [n for s, n in enumerate(per_step) if s not in logged] == [0, 0, 0, 0], per_step
    assert per_step[2] > 0  # the logged step reads its losses, gradient norm and codes


def test_the_host_read_counter_sees_the_padded_pass(tiny_paths, task_file, tmp_path, monkeypatch):
    """The padded decoder-only pass selects its targets with a boolean mask: counted."""
    per_step = host_reads_per_step(tiny_paths, task_file, tmp_path / "run", monkeypatch, packing="no")
    assert per_step[0] > 0 and per_step[1] > 0


def test_batches_prepared_ahead_train_the_same_weights(tiny_paths, task_file, tmp_path):
    def weights(name, **kw):
        cfg = TrainConfig.from_flags(output_dir=str(tmp_path / name), model=str(tiny_paths["llama"]), preset="tiny",
                                     train_files=[str(task_file)], code_length=3, codebook_size=8, **kw)
        return load_file(str(train(cfg) / "ctr_weights.safetensors"))
    ahead, inline = weights("ahead", prefetch=3), weights("inline", prefetch=0)
    assert ahead.keys() == inline.keys() and all(torch.equal(ahead[k], inline[k]) for k in ahead)


def test_divergence_between_reads_names_the_steps(tiny_paths, task_file, tmp_path):
    cfg = TrainConfig.from_flags(output_dir=str(tmp_path / "run"), model=str(tiny_paths["llama"]), preset="tiny",
                                 train_files=[str(task_file)], code_length=3, codebook_size=8, log_every=3,
                                 save_every=3, steps=9)

    def poison(step, out):
        if step == 4:
            out.token_loss_sum = out.token_loss_sum * float("nan")
        return out
    with pytest.raises(TrainingDiverged, match=r"in steps 3-5 .*updates of steps 3-4 were applied"):
        train(cfg, hooks={"after_forward": poison})
    assert (tmp_path / "run" / "checkpoint-0000003").exists()  # saved before the bad step
    assert not (tmp_path / "run" / "checkpoint-0000006").exists()  # read first, never saved


def test_compiled_packed_passes_do_not_recompile_every_step(tiny_paths, task_file, tmp_path, monkeypatch):
    """--compile with packed passes (padded to a multiple of --pack-multiple, dynamic shapes):
    after the first steps no step traces a new graph. AOT autograd without code generation."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from ctr.train import trainer
    monkeypatch.setattr(trainer, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()  # graphs counted from here (and left at 0 for the tests after this one)
    graphs = {}
    cfg = TrainConfig.from_flags(output_dir=str(tmp_path / "run"), model=str(tiny_paths["llama"]), preset="tiny",
                                 train_files=[str(task_file)], code_length=3, codebook_size=8, steps=6,
                                 compile=True, pack_multiple=16, save_every=100)
    train(cfg, hooks={"step_end": lambda step: graphs.__setitem__(step, counters["stats"]["unique_graphs"])})
    assert graphs[0] >= 1 and graphs[5] == graphs[2], graphs
    torch._dynamo.reset()
    counters.clear()
