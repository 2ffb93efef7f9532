"""Two-stage multi-task training (`ctr train`), on HF Accelerate.

Stage 1 trains task embeddings, encoder, codebook and decoder with the LM frozen;
stage 2 trains everything, starting from a stage-1 checkpoint. The batch of step s is a
function of (seed, s), dropout is reseeded per step, and checkpoints hold model,
optimizer and scheduler, so `--resume` after a kill reproduces the uninterrupted run.

Several processes (`accelerate launch` or `torchrun`, GPUs or CPU) split each global
batch into contiguous shards; the loss is the token mean over the whole global batch,
the lr schedule advances once per optimizer step, the quantizer's statistics are summed
over the processes, and the main process logs the global values, so N processes train
the same model as one process does on the same global batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ctr.core.backbone import load_backbone
from ctr.train.batching import MixtureSampler, encode_tasks
from ctr.train.dataset_cache import InMemoryRows, open_training_data
from ctr.train.checkpoint import (check_fresh_start, check_resume, latest_checkpoint, load_training_state,
                                  prune_checkpoints, save_checkpoint)
from ctr.config import RESOLVED_CONFIG_FILE, TRAIN_CONFIG_FILE, CTRConfig, TrainConfig
from ctr.modes import TrainMode
from ctr.tasks.mixture import UNKNOWN_TYPE, Task, load_tasks
from ctr.fileio import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from ctr.provenance import PROVENANCE_FILE, provenance
from ctr.core.loading import require_model_dir
from ctr.core.model import CONFIG_FILE, CTRModel
from ctr.core.model_card import CardInfo
from ctr.core.prompt_format import PromptEncoder
from ctr.train.lora import lora_summary, train_backbone
from ctr.train.metrics import step_record, summarize_run, write_health  # noqa: F401 (summarize_run: ctr.demo)
from ctr.train.parallelism import make_accelerator
from ctr.train.step_batches import StepBatches, packing_summary, resolve_packing
from ctr.train.step_stats import StepClock, StepStats, TrainingDiverged  # noqa: F401 (TrainingDiverged: raised in training)
from ctr.train.time_budget import Schedule, TimeBudget

COMPILE_BACKEND = "inductor"  # --compile's torch.compile backend (tests use a faster one)


@torch.no_grad()
def description_vectors(backbone, tokenizer, tasks: list[Task]) -> torch.Tensor:
    """Mean input embedding of a short text describing each task (dataset, template, type)."""
    emb = backbone.get_input_embeddings()
    out = []
    for t in tasks:
        text = f"{t.dataset or t.name} {t.template} {t.task_type}".replace("_", " ")
        ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids or [0])
        out.append(emb(ids.to(emb.weight.device)).float().mean(0))
    return torch.stack(out)


def continues_codes(cfg: TrainConfig) -> bool:
    """Stage 2 from a stage-1 checkpoint: the CTR module goes on as stage 1 built it."""
    return cfg.mode is TrainMode.FINETUNE and bool(cfg.init_from)


def adopted_module(cfg: TrainConfig) -> CTRConfig:
    """Stage 2 keeps the CTR module of --init-from as it is (its quantizer, losses and
    gradient path): its options, for resolved_config.json, the checkpoints and --resume.
    Only the prompt format must match, where it was given (as a flag, or in a whole `ctr`)."""
    saved = CTRConfig.from_dict(read_json(require_model_dir(cfg.init_from, "--init-from") / CONFIG_FILE))
    flags = cfg.given_module_options  # None: `ctr` given whole, or nothing
    given = cfg.ctr is not None and (flags is None or "target_delimiter" in flags)
    if given and cfg.ctr.target_delimiter != saved.target_delimiter:
        raise ValueError(f"--target-delimiter {cfg.ctr.target_delimiter!r} differs from the "
                         f"{saved.target_delimiter!r} that --init-from {cfg.init_from} was trained "
                         "with: pass the same one")
    return dataclasses.replace(saved, task_names=[])  # the tasks are checked against the data


def plan_run(cfg: TrainConfig) -> TrainConfig:
    """What a run of `cfg` uses: `cfg.resolved()`, with --init-from's module in stage 2
    (`ctr train --print-config` prints it; the run writes it as resolved_config.json)."""
    run = cfg.resolved()
    if continues_codes(run):
        run = dataclasses.replace(run, ctr=adopted_module(cfg), codebook_recipe=None)
    return run


def set_trainable(model: CTRModel, cfg: TrainConfig) -> None:
    """The backbone frozen (--mode codebook), else trained whole or through LoRA adapters
    (--lora, ctr.train.lora)."""
    if cfg.mode is TrainMode.CODEBOOK:
        model.freeze_backbone()
    else:
        train_backbone(model, cfg)


def build_model(cfg: TrainConfig, tasks: list[Task]) -> CTRModel:
    if cfg.mode is TrainMode.FINETUNE:
        if not cfg.init_from:
            raise ValueError("--mode finetune (--stage 2) starts from a stage-1 checkpoint: pass "
                             "--init-from PATH (or --mode joint to train fresh codes with the backbone)")
        model = CTRModel.from_pretrained(require_model_dir(cfg.init_from, "--init-from"))
        if [t.name for t in tasks] != model.config.task_names:
            raise ValueError(f"--init-from {cfg.init_from}: its tasks differ from the training data "
                             "(same --tasks / --max-tasks / --drop-single-answer as stage 1?)")
        return model
    backbone, tok = load_backbone(cfg.model)
    ctr_cfg = dataclasses.replace(cfg.module(), task_names=[t.name for t in tasks],
                                  use_codes=cfg.mode.uses_codes, backbone=cfg.model)
    described, grouped = ctr_cfg.task_init == "description", ctr_cfg.encoder_init == "grouped"
    vectors = description_vectors(backbone, tok, tasks) if described or grouped else None
    model = CTRModel(backbone, ctr_cfg, tok, task_vectors=vectors if described else None,
                     task_profiles=vectors if grouped else None)
    if cfg.init_from:
        src = CTRModel.from_pretrained(require_model_dir(cfg.init_from, "--init-from"), backbone=backbone, tokenizer=tok)
        model.load_state_dict(src.state_dict())
    if ctr_cfg.use_codes and ctr_cfg.kmeans_init:
        model.kmeans_init()
    return model


def make_optimizer(model: CTRModel, cfg: TrainConfig, device: torch.device | None = None
                   ) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scales = {"encoder": cfg.projection_lr_scale if cfg.encoder_lr_scale is None else cfg.encoder_lr_scale,
              "decoder.weight": cfg.projection_lr_scale}
    if cfg.task_embedding_lr_scale != 1.0:  # a group of its own only when it differs, so that the
        # optimizer state of a run without it keeps its layout (resume)
        scales["task_embedding.weight"] = cfg.task_embedding_lr_scale
    groups = [{"params": [p for n, p in named if p.dim() >= 2 and n not in scales],
               "weight_decay": cfg.weight_decay},
              *({"params": [p for n, p in named if n == name], "weight_decay": cfg.weight_decay,
                 "lr": cfg.lr * scale} for name, scale in scales.items()),
              {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0}]  # biases, norms
    fused = cfg.fused_adamw == "yes" or (cfg.fused_adamw == "auto" and device is not None
                                         and device.type == "cuda")
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def lr_lambda(schedule: Schedule) -> Callable[[int], float]:
    """Linear warmup, then cosine decay from 1 to min_lr_ratio, over the schedule's steps as
    they are when each step's lr is computed (--max-minutes may shorten them). `schedule`:
    anything with steps, warmup_steps and min_lr_ratio."""
    def f(step: int) -> float:
        s = schedule
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def train(cfg: TrainConfig, tasks: list[Task] | None = None, stop_after: int | None = None,
          hooks: dict[str, Callable] | None = None) -> Path:
    """Run training; returns the folder of the final model. `stop_after` ends this call
    after that many steps without a final save (as a preempted job would)."""
    hooks = hooks or {}
    run = plan_run(cfg)  # what this run uses; `cfg` stays as given (both are written below)
    out = Path(run.output_dir)
    if not run.resume:  # first, on every process: none goes on alone, no data is read in vain
        check_fresh_start(out)
    out.mkdir(parents=True, exist_ok=True)
    precision = run.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    acc = make_accelerator(precision)
    budget = TimeBudget(run, acc, out)  # --max-minutes (ctr.train.time_budget); the clock starts
    schedule = budget.schedule  # the steps taken: run.steps, unless the time budget sets fewer
    torch.manual_seed(run.seed)
    # the data: the Arrow cache (ctr.train.dataset_cache), or in memory (--no-data-cache, given tasks)
    data = open_training_data(run, acc) if tasks is None and not run.no_data_cache else None
    tasks = data.tasks if data is not None else (
        tasks if tasks is not None else load_tasks(run, verbose=acc.is_main_process))

    resume_from = latest_checkpoint(out) if run.resume else None
    if run.resume and resume_from is None and acc.is_main_process:
        print(f"[ctr] --resume: no checkpoint in {out}, starting fresh")
    if resume_from is not None:
        budget.adopt(resume_from)  # a step count decided under --max-minutes is kept
        check_resume(resume_from, run, [t.name for t in tasks])
        model = CTRModel.from_pretrained(resume_from / "model")
    else:
        model = build_model(run, tasks)
    set_trainable(model, run)
    if run.gradient_checkpointing:  # stage 2 only; non-reentrant: the prompt's gradient passes through
        enable = getattr(model.backbone, "activation_checkpointing_enable", None) or \
            model.backbone.gradient_checkpointing_enable  # its name in older transformers
        enable({"use_reentrant": False})
    packed = resolve_packing(run, model)  # --packing: one sequence per pass (ctr.core.packing)
    run = dataclasses.replace(run, packing="yes" if packed else "no")  # as recorded
    if run.compile:  # in place: parameter names, state dicts and saves stay those of the module
        model.adapter.trunk(model).compile(dynamic=True, backend=COMPILE_BACKEND)
    model.train()
    optimizer = make_optimizer(model, run, acc.device)
    # not passed to acc.prepare: Accelerate would step it once per process per step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule))
    start = 0 if resume_from is None else load_training_state(resume_from, optimizer, scheduler)["step"]
    if acc.is_main_process:  # records after the start go: a fresh start keeps none of a dead run's
        _truncate_metrics(out / "metrics.jsonl", start)
        if resume_from is not None:
            print(f"[ctr] resumed from {resume_from} at step {start}")
    model, optimizer = acc.prepare(model, optimizer)
    core: CTRModel = acc.unwrap_model(model)
    # usage, dead-code revival (and with every task quantised, the EMA step) once per
    # optimizer step, alike on every process
    revival = core.config.use_codes and (core.config.quantizer == "plain" or core.config.quantize_all_tasks)
    if revival:
        core.quantizer.defer_usage = True
    warmup = run.codebook_warmup_steps if core.config.use_codes and run.mode is TrainMode.CODEBOOK else 0
    if warmup:  # continuous task prompts until the codebook is set (ctr.core.model._quantize_tasks)
        core.quantizer.quantizing = start >= warmup
    types = [None if t.task_type == UNKNOWN_TYPE else t.task_type for t in tasks]  # for codebook health
    encoder = PromptEncoder.for_model(core)
    encoded = data.tokenised(encoder, run, acc) if data is not None else InMemoryRows(
        encode_tasks(tasks, encoder, run.max_source_len, run.max_target_len))
    sampler = MixtureSampler(encoded.sizes, run.mixing, run.task_cap, run.seed)
    n_proc = acc.num_processes
    if run.batch_size % (n_proc * run.micro_batch_size):
        raise ValueError(f"--batch-size {run.batch_size} must be a multiple of {n_proc} processes "
                         f"x --micro-batch-size {run.micro_batch_size}")
    prompt_len = core.config.code_length if core.config.use_codes else 0
    # the batches of the next steps, sampled and collated by a worker thread (ctr.train.step_batches)
    batches = StepBatches(encoded, sampler, run, core.adapter, core.tokenizer.pad_token_id,
                          prompt_len if packed else None, acc.process_index, n_proc,
                          pin=acc.device.type == "cuda")
    if acc.is_main_process:
        write_json(out / TRAIN_CONFIG_FILE, dataclasses.asdict(cfg))  # as given
        write_json(out / RESOLVED_CONFIG_FILE, dataclasses.asdict(run))  # as used
        write_json(out / PROVENANCE_FILE, provenance())  # command, commit, hardware, start time
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"[ctr] stage {run.stage}: {len(tasks)} tasks, {n_train:,} trainable parameters, "
              f"{schedule.steps} steps x {run.batch_size} examples, device {acc.device}")
        print(f"[ctr] {packing_summary(core, packed, acc.device, precision)}")
        if core.config.lora:
            print(f"[ctr] {lora_summary(core)}")

    trainable = [p for p in model.parameters() if p.requires_grad]
    # loss sums and the non-finite flag stay on the device; read when due (ctr.train.step_stats)
    stats = StepStats(acc.device, core.config.vq_weight,
                      (lambda t: acc.reduce(t, reduction="sum")) if n_proc > 1 else None)
    clock = StepClock(start)
    bar = tqdm(range(start, schedule.steps), initial=start, total=schedule.steps, desc=f"stage {run.stage}",
               disable=not acc.is_main_process, dynamic_ncols=True)
    last_good = None
    budget.begin(start)
    for step in bar:
        if step >= schedule.steps:  # --max-minutes set fewer steps
            break
        batch = batches.get(step)  # prepared ahead: this process's passes of the global batch
        if warmup and step == warmup:  # the warm-up ends: k-means on every task's encoding
            core.kmeans_init(seed=run.seed * 1_000_003 + step)
            core.quantizer.quantizing = True
        # dropout, per step and process (each process's shard gets its own masks)
        torch.manual_seed(run.seed * 1_000_003 + step + 1_000_000_007 * acc.process_index)
        stats.begin(step)
        for k, p in enumerate(batch.passes):
            if "micro_batch" in hooks:  # the rows of this forward pass (ctr.bench.throughput)
                hooks["micro_batch"](step, p.rows)
            inputs = p.to(acc.device)
            if not run.mode.uses_codes:
                inputs.pop("task_ids")
            sync = acc.no_sync(model) if k < len(batch.passes) - 1 else contextlib.nullcontext()
            with sync, acc.autocast():
                o = model(**inputs, target_only=run.target_only_logits)
                if "after_forward" in hooks:
                    o = hooks["after_forward"](step, o)
                # token mean and VQ row mean over the whole global batch, whatever the
                # micro-batching; x n_proc undoes DDP's gradient average
                lm = o.token_loss_sum / batch.n_tokens
                vq = o.vq_loss * (len(p.rows) / run.batch_size)  # o.vq_loss: this pass's row mean
                acc.backward((lm + core.config.vq_weight * vq) * n_proc)
            stats.add(lm, vq)
        if "before_update" in hooks:  # the accumulated gradients, before clipping
            hooks["before_update"](step, core)
        grad_norm = acc.clip_grad_norm_(trainable, run.grad_clip)  # foreach kernels on GPU
        stats.end(grad_norm)
        done = step + 1
        ends = done >= schedule.steps or (stop_after is not None and done - start >= stop_after)
        due = done % run.log_every == 0 or done % run.save_every == 0 or ends
        losses = stats.read(step, last_good) if due else None  # host sync; raises before the update
        optimizer.step()
        decided = budget.after_step(step + 1, core)  # may set fewer steps, before the next lr
        if decided:
            bar.total = schedule.steps
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if revival:  # revival vectors drawn from a per-step generator, alike on every process
            core.quantizer.end_step(seed=run.seed * 1_000_003 + step)
        if "step_end" in hooks:  # the step's work is queued (ctr.bench.throughput times it)
            hooks["step_end"](step)
        logged = done % run.log_every == 0 or done == schedule.steps

        def log_step():  # reads the losses (every process: reduced over all) and the grad norm
            nonlocal losses
            losses = losses or stats.read(step, last_good, updated=True)
            bar.set_postfix(loss=f"{losses['loss']:.3f}", vq=f"{losses['vq_loss']:.3f}")
            if acc.is_main_process:
                append_jsonl(out / "metrics.jsonl", step_record(
                    done, losses, scheduler.get_last_lr()[0], grad_norm, clock.lap(done),
                    batch.n_inputs, decided, core, revival, types))
        if logged:
            log_step()
        if done % run.save_every == 0 and done < schedule.steps and budget.may_save:
            acc.wait_for_everyone()
            if acc.is_main_process:
                last_good = out / f"checkpoint-{done:07d}"
                with budget.saving(), clock.paused():
                    save_checkpoint(last_good, core, optimizer, scheduler, done,
                                    {"config": dataclasses.asdict(run), **budget.state()})
                prune_checkpoints(out, run.keep_checkpoints)
        if stop_after is not None and done - start >= stop_after and done < schedule.steps:
            acc.wait_for_everyone()  # the checkpoint is on disk when any process returns
            return out
        if budget.out_of_time(done, core):  # ends with final/ inside --max-minutes
            if not logged:  # the last step is always in metrics.jsonl
                log_step()
            break
    acc.wait_for_everyone()
    final = out / "final"
    if acc.is_main_process:
        records = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
        card = CardInfo(metrics=records[-1] if records else None, stage=run.stage,
                        task_types={t.name: t.task_type for t in tasks})
        with budget.saving():
            core.save_pretrained(final, card=card)
        budget.finish()
        if core.config.use_codes:
            write_json(out / "code_table.json", core.code_table())
            write_health(out, core, types)
    acc.wait_for_everyone()
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (all of them on a fresh
    start: a run killed before its first checkpoint starts over), and a last line a kill
    cut off; the file is replaced atomically."""
    if not path.exists():
        return
    write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])
