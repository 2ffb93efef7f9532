"""Several processes train the model one process trains; bf16 picks the saved codes.

Two CPU processes (gloo) are launched once for the whole module, by plain `torchrun`
(no ACCELERATE_USE_CPU: the trainer sets Accelerate up for the CPU itself). They run
`ctr train` through the CLI (stage 1 with dead-code revival firing), then the EMA
quantizer, every task quantised at every step (with and without a codebook warm-up),
stage 2, and a killed run and its resume; each is compared with a one-process
run on the same global batch.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctr.train.batching import MixtureSampler
from ctr.config import CTRConfig, TrainConfig
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone
from ctr.train.trainer import build_model, load_tasks, train

ROOT = Path(__file__).resolve().parents[2]
RUNNER = """
import json, sys
from ctr.cli import main
from ctr.config import TrainConfig
from ctr.train.trainer import train
for run in json.load(open(sys.argv[1])):
    if "argv" in run:
        assert main(run["argv"]) == 0
    else:
        train(TrainConfig.from_flags(**run["cfg"]), stop_after=run.get("stop_after"))
"""
TOKEN_BUDGET = 30  # padded positions per forward pass (--micro-batch-tokens)
REVIVAL = 0.99  # usage starts at 1 and decays 1% per forward pass: unused codes revive at once


def base_cfg(paths, task_file, out, **kw):
    cfg = dict(output_dir=str(out), model=str(paths["llama"]), preset="tiny",
               train_files=[str(task_file)], max_source_len=32, max_target_len=8,
               code_length=3, codebook_size=8, save_every=3)
    cfg.update(kw)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], env_extra: dict[str, str], timeout: int = 300) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PET_MASTER_PORT=str(free_port()), **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"


@pytest.fixture(scope="module")
def runs(tiny_paths, tmp_path_factory):
    """One-process references in this process, then one 2-process launch."""
    from conftest import write_tasks
    root = tmp_path_factory.mktemp("dist")
    tasks = write_tasks(root / "tasks.jsonl")
    c = lambda name, **kw: base_cfg(tiny_paths, tasks, root / name, **kw)
    s1 = dict(dead_code_threshold=REVIVAL)
    # EMA statistics are updated per forward pass over all processes' rows: one process
    # with micro-batch 4 makes the same updates as two with micro-batch 2 each
    ema = dict(quantizer="ema")
    # every task quantised at every step: the EMA step and revival once per optimizer step
    # from every task's encodings, so one process's two passes equal two processes' one
    every = dict(quantizer="ema", quantize_all_tasks=True, dead_code_threshold=REVIVAL)
    # continuous prompts for 2 steps, then k-means of every task's encoding
    warm = dict(quantizer="ema", quantize_all_tasks=True, codebook_warmup_steps=2,
                dead_code_threshold=REVIVAL, value_offsets=True)
    one = {"s1": train(TrainConfig.from_flags(**c("one_s1", **s1))),
           "ema": train(TrainConfig.from_flags(**c("one_ema", micro_batch_size=4, **ema))),
           "all": train(TrainConfig.from_flags(**c("one_all", **every))),
           "warm": train(TrainConfig.from_flags(**c("one_warm", **warm)))}
    # tasks start on codes grouped by their descriptions (k-means drawn from the seeded RNG)
    grouped = dict(every, encoder_init="grouped")
    one["grouped"] = train(TrainConfig.from_flags(**c("one_grouped", **grouped)))
    s2 = dict(stage=2, init_from=str(one["s1"]))
    one["s2"] = train(TrainConfig.from_flags(**c("one_s2", **s2)))
    lora = dict(s2, lora=True, lora_r=4, lora_dropout=0.0)  # stage 2 with LoRA adapters
    one["lora"] = train(TrainConfig.from_flags(**c("one_lora", **lora)))
    # a token budget per forward pass: the two processes' shards plan different pass counts.
    # Stage 2 with fresh codes (--joint): continuing one["s1"] would adopt its dead-code
    # threshold, whose revival depends on the pass count (what --micro-batch-tokens refuses)
    tok = dict(stage=2, joint=True, micro_batch_tokens=TOKEN_BUDGET)
    one["tok"] = train(TrainConfig.from_flags(**c("one_tok", **tok)))
    one["tok_cfg"] = TrainConfig.from_flags(**c("plan", micro_batch_tokens=TOKEN_BUDGET))
    cli = ["train", "--model", str(tiny_paths["llama"]), "--preset", "tiny", "--train-files",
           str(tasks), "--max-source-len", "32", "--max-target-len", "8", "--code-length", "3",
           "--codebook-size", "8", "--save-every", "3", "--dead-code-threshold", str(REVIVAL),
           "--output-dir", str(root / "two_s1")]
    spec = [{"argv": cli}, {"cfg": c("two_ema", **ema)}, {"cfg": c("two_all", **every)},
            {"cfg": c("two_warm", **warm)}, {"cfg": c("two_grouped", **grouped)}, {"cfg": c("two_s2", **s2)},
            {"cfg": c("two_lora", **lora)}, {"cfg": c("two_tok", **tok)},
            {"cfg": c("two_budget", max_minutes=5.0, steps=10)},  # --max-minutes: one decision
            {"cfg": c("two_cut", **s1), "stop_after": 4},  # killed after step 4
            {"cfg": c("two_cut", resume=True, **s1)}]
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "runner.py").write_text(RUNNER)
    # plain torchrun on a machine without GPUs (what `torchrun --nproc_per_node 2 -m
    # ctr.cli train ...` does, for several runs in one launch)
    launch([str(root / "runner.py"), str(root / "spec.json")], {})
    return root, one


def weights(final: Path) -> dict[str, torch.Tensor]:
    w = load_file(str(final / "ctr_weights.safetensors"))
    if (final / "backbone").exists():
        model = CTRModel.from_pretrained(final)
        w.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    if (final / "lora").exists():  # the LoRA adapter
        w.update({f"lora.{k}": v for k, v in load_file(str(final / "lora" / "adapter_model.safetensors")).items()})
    return w


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path, atol: float = 1e-4, skip: tuple[str, ...] = ()) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in set(wa) - set(skip):
        diff = (wa[k].double() - wb[k].double()).abs().max().item() if wa[k].numel() else 0.0
        assert diff < atol, f"{k}: max abs diff {diff}"


def test_the_token_budget_case_has_processes_planning_different_pass_counts(runs):
    """Else the "tok" case below could not catch processes running unequal pass counts."""
    from ctr.core.prompt_format import PromptEncoder
    from ctr.train.batching import encode_tasks, micro_batches
    _, one = runs
    cfg = one["tok_cfg"].resolved()  # the values the trainer plans with
    tasks = load_tasks(cfg, verbose=False)
    model = build_model(cfg, tasks)
    rows = encode_tasks(tasks, PromptEncoder.for_model(model), cfg.max_source_len, cfg.max_target_len)
    sampler = MixtureSampler([len(r) for r in rows], cfg.mixing, cfg.task_cap, cfg.seed)
    plans = []
    for step in range(cfg.steps):  # each process's contiguous shard of the global batch
        batch = [rows[t][i] for t, i in sampler.batch(step, cfg.batch_size)]
        half = cfg.batch_size // 2
        plans.append([len(micro_batches(shard, cfg.micro_batch_size, model.adapter, True, TOKEN_BUDGET,
                                        packed=True))  # as the trainer plans packed passes
                      for shard in (batch[:half], batch[half:])])
    assert any(a != b for a, b in plans), plans


@pytest.mark.parametrize("name", ["s1", "ema", "all", "warm", "grouped", "s2", "lora", "tok"])
def test_two_processes_train_the_one_process_model(runs, name):
    root, one = runs
    two = root / f"two_{name}"
    # code usage decays per forward pass and a token budget plans other pass counts on one
    # process than on two (so --micro-batch-tokens refuses --dead-code-threshold, its only reader)
    assert_same_weights(one[name], two / "final", skip=("quantizer.usage",) if name == "tok" else ())
    for run in (root / f"one_{name}", two):  # packed passes (the default where exact)
        assert json.loads((run / "resolved_config.json").read_text())["packing"] == "yes"
    ra, rb = records(root / f"one_{name}"), records(two)
    steps = TrainConfig(preset="tiny").resolved().steps
    # one record per step: the main process alone writes, and the schedule steps once
    assert [r["step"] for r in rb] == list(range(1, steps + 1))
    assert [r["lr"] for r in rb] == pytest.approx([r["lr"] for r in ra], rel=1e-12)
    for x, y in zip(ra, rb):  # global values, not rank 0's share
        for key in ("loss", "lm_loss", "vq_loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], abs=1e-4, rel=1e-5), (x["step"], key)
        assert y["code_perplexity"] == x["code_perplexity"]
    if name in ("s1", "all", "warm", "grouped"):  # revival alike on every process
        assert [r["revived_codes"] for r in rb] == [r["revived_codes"] for r in ra]
        # k-means leaves every value of the small warm-started codebook in use
        assert sum(r["revived_codes"] for r in rb) > 0 or name == "warm"
        assert json.loads((two / "code_table.json").read_text()) == \
            json.loads((root / f"one_{name}" / "code_table.json").read_text())


def test_a_time_budget_is_decided_once_for_all_processes(runs):
    """The main process's step count reaches every process (else the collectives would
    not match and the launch would hang or fail)."""
    from ctr.train.time_budget import BUDGET_FILE, PROBE_STEPS
    root, _ = runs
    budget = json.loads((root / "two_budget" / BUDGET_FILE).read_text())
    assert budget["decided_at_step"] == PROBE_STEPS and budget["steps_done"] == budget["steps"]
    assert [r["step"] for r in records(root / "two_budget")] == list(range(1, budget["steps"] + 1))
    assert (root / "two_budget" / "final" / "ctr_weights.safetensors").exists()


def test_killed_two_process_run_resumes_to_the_same_weights(runs):
    root, one = runs
    cut = root / "two_cut"
    assert (cut / "checkpoint-0000003").exists()
    assert_same_weights(cut / "final", root / "two_s1" / "final", atol=1e-6)
    assert_same_weights(cut / "final", one["s1"])
    strip = lambda rs: [{k: v for k, v in r.items() if k != "step_time"} for r in rs]
    assert strip(records(cut)) == strip(records(root / "two_s1"))


# ---- bf16: codes are picked in fp32 -------------------------------------------------
@pytest.mark.parametrize("quantizer", ["plain", "ema"])
def test_codes_under_bf16_autocast_equal_fp32_codes(quantizer):
    backbone, tok = tiny_backbone("llama")
    names = [f"t{i}" for i in range(64)]
    torch.manual_seed(0)
    model = CTRModel(backbone, CTRConfig(code_length=10, codebook_size=128, task_names=names,
                                         quantizer=quantizer), tok).eval()
    ids = torch.arange(len(names))
    fp32 = model.task_codes()
    z = model.encode_tasks(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.task_codes(), fp32)
        assert torch.equal(model.soft_prompt(len(names), task_ids=ids)[1], fp32)
        assert torch.equal(model.quantizer(z).codes, fp32)  # the distances alone
        assert model.encode_tasks(ids).dtype == torch.float32


@pytest.fixture
def fresh_accelerate_state():
    """Another mixed precision than earlier tests used needs a fresh AcceleratorState."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.parametrize("quantizer", ["plain", "ema"])
def test_bf16_training_uses_the_saved_code_table(tiny_paths, task_file, tmp_path, quantizer,
                                                 fresh_accelerate_state):
    # long codes and a big codebook: bf16 rounding would flip a few of the 3 x 32 positions
    cfg = TrainConfig.from_flags(**base_cfg(tiny_paths, task_file, tmp_path / "run", mixed_precision="bf16",
                                 code_length=32, codebook_size=256, steps=4, save_every=1,
                                 keep_checkpoints=10, quantizer=quantizer,
                                 group_by_length=False)).resolved()  # codes come back in sampled row order
    seen: dict[int, list[torch.Tensor]] = {}

    def capture(step, o):
        seen.setdefault(step, []).append(o.codes.detach().cpu())
        return o
    torch.manual_seed(cfg.seed)  # as the trainer does before building the model
    tables = [build_model(cfg, load_tasks(cfg, verbose=False)).code_table()]
    train(cfg, hooks={"after_forward": capture})
    # checkpoint-s holds the weights step s ran with, and their fp32 code table
    tables += [json.loads((tmp_path / "run" / f"checkpoint-{s:07d}" / "model" / "code_table.json")
                          .read_text()) for s in range(1, cfg.steps)]
    names = list(tables[0])
    sizes = [sum(1 for x in task_file.read_text().splitlines() if json.loads(x)["task"] == n)
             for n in names]
    sampler = MixtureSampler(sizes, cfg.mixing, cfg.task_cap, cfg.seed)
    for step, table in enumerate(tables):  # every step, the last one included
        used = torch.cat(seen[step])
        for (t, _), code in zip(sampler.batch(step, cfg.batch_size), used):
            assert code.tolist() == table[names[t]], (step, names[t])
