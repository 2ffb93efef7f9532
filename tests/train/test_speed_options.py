"""Speed and memory options of the trainer change nothing but speed and memory:
--gradient-checkpointing, --fused-adamw and --compile give the loss, gradients and update
of the plain run (float rounding aside)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ctr.config import TrainConfig
from ctr.train.trainer import train
from test_micro_batches import first_step, varied_tasks


def counting_linear_calls(monkeypatch) -> list[int]:
    """Count every nn.Linear forward (the layers' projections among them); the live list."""
    calls: list[int] = []
    real = torch.nn.Linear.forward

    def forward(self, x):
        calls.append(1)
        return real(self, x)
    monkeypatch.setattr(torch.nn.Linear, "forward", forward)
    return calls


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_gradient_checkpointing_gives_the_same_stage2_gradients(tiny_paths, tmp_path, arch, monkeypatch):
    """The same loss and gradients, and the option took effect: the backward pass runs the
    layers' projections again (more Linear calls than the plain step, which keeps activations)."""
    tasks = varied_tasks(tmp_path / "tasks.jsonl")
    run = lambda name, **kw: first_step(tiny_paths, tasks, tmp_path / name, arch, stage=2, joint=True,
                                        micro_batch_size=4, **kw)
    calls = counting_linear_calls(monkeypatch)
    ref_record, ref = run("plain")
    plain_calls, calls[:] = len(calls), []
    record, got = run("checkpointed", gradient_checkpointing=True)
    assert plain_calls > 0 and len(calls) > plain_calls, (plain_calls, len(calls))  # recomputed
    assert record["loss"] == pytest.approx(ref_record["loss"], rel=1e-6)
    assert got.keys() == ref.keys() and any(n.startswith("backbone.") for n in ref)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_checkpointing_in_stage_1_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--gradient-checkpointing"):
        TrainConfig.from_flags(output_dir=str(tmp_path), stage=1, gradient_checkpointing=True)


def test_fused_adamw_trains_the_same_weights(tiny_paths, task_file, tmp_path, monkeypatch):
    """The same weights, and the option took effect: `--fused-adamw yes` updates through
    torch's fused AdamW kernel at every step, `no` never does."""
    kernel_calls: list[int] = []
    real_kernel = torch._fused_adamw_

    def kernel(*a, **k):
        kernel_calls.append(1)
        return real_kernel(*a, **k)
    monkeypatch.setattr(torch, "_fused_adamw_", kernel)

    def weights(name, fused):
        kernel_calls.clear()
        cfg = TrainConfig.from_flags(output_dir=str(tmp_path / name), model=str(tiny_paths["llama"]), preset="tiny",
                                     train_files=[str(task_file)], max_source_len=32, max_target_len=8,
                                     code_length=3, codebook_size=8, steps=3, save_every=100, fused_adamw=fused)
        return load_file(str(train(cfg) / "ctr_weights.safetensors")), len(kernel_calls)
    (plain, plain_calls), (fused, fused_calls) = weights("plain", "no"), weights("fused", "yes")
    assert plain_calls == 0 and fused_calls >= 3  # at least one kernel call per step
    assert plain.keys() == fused.keys()
    for k in plain:
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-4, atol=1e-6, msg=k)


def test_compile_gives_the_same_gradients(tiny_paths, tmp_path, monkeypatch):
    """--compile traces the module a training pass runs (decoder-only: the body; seq2seq: the
    whole model, not run here for time) with dynamic shapes; llama stage 2. Through AOT
    autograd without code generation: inductor compiles for minutes on this CPU (checked by
    hand on llama stage 1 and 2: the same gradients to 4e-8)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from ctr.train import trainer
    monkeypatch.setattr(trainer, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    tasks = varied_tasks(tmp_path / "tasks.jsonl")
    run = lambda name, **kw: first_step(tiny_paths, tasks, tmp_path / name, "llama", stage=2,
                                        joint=True, micro_batch_size=4, **kw)
    ref_record, ref = run("plain")
    assert counters["stats"]["unique_graphs"] == 0
    record, got = run("compiled", compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the pass went through the compiled module
    assert record["loss"] == pytest.approx(ref_record["loss"], rel=1e-6)
    assert got.keys() == ref.keys() and any(n.startswith("backbone.") for n in ref)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-6, msg=n)
    torch._dynamo.reset()
