"""Two-stage multi-task training (`ctr train`), on HF Accelerate.

Stage 1 trains task embeddings, encoder, codebook and decoder with the LM frozen;
stage 2 trains everything, starting from a stage-1 checkpoint. The batch of step s is a
function of (seed, s), dropout is reseeded per step, and checkpoints hold model,
optimizer and scheduler, so `--resume` after a kill reproduces the uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .backbone import is_encoder_decoder, load_backbone
from .batching import MixtureSampler, collate, encode_tasks
from .checkpoint import latest_checkpoint, load_training_state, prune_checkpoints, save_checkpoint
from .config import CTRConfig, TrainConfig
from .data import Task, answer_report, load_jsonl_tasks, load_t0_tasks
from .fileio import append_jsonl, write_json
from .modeling import CTRModel, find_model_dir
from .quantizer import code_usage


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the last checkpoint on disk is the last good state."""


def load_tasks(cfg: TrainConfig, verbose: bool = True) -> list[Task]:
    if cfg.train_files:
        tasks, report = load_jsonl_tasks(cfg.train_files, cfg.drop_single_answer, cfg.limit_examples)
    else:
        tasks, report = load_t0_tasks(cfg.data_dir, cfg.tasks or None, cfg.drop_single_answer,
                                      cfg.limit_examples, cfg.max_tasks, cfg.tasks_per_type)
    if not tasks:
        raise ValueError("no training tasks left after loading (see the summary above)")
    if verbose:
        print(report.summary())
        print(answer_report(tasks, limit=12))
    return tasks


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


def build_model(cfg: TrainConfig, tasks: list[Task]) -> CTRModel:
    if cfg.stage == 2 and not cfg.no_codes and not cfg.joint:
        if not cfg.init_from:
            raise ValueError("--stage 2 starts from a stage-1 checkpoint: pass --init-from PATH "
                             "(or --joint to train fresh codes with the backbone)")
        model = CTRModel.from_pretrained(_model_dir(cfg.init_from))
        if [t.name for t in tasks] != model.config.task_names:
            raise ValueError(f"--init-from {cfg.init_from}: its tasks differ from the training data "
                             "(same --tasks / --max-tasks / --drop-single-answer as stage 1?)")
        return model
    backbone, tok = load_backbone(cfg.model)
    ctr_cfg = CTRConfig(code_length=cfg.code_length, codebook_size=cfg.codebook_size,
                        task_names=[t.name for t in tasks], quantizer=cfg.quantizer,
                        kmeans_init=cfg.kmeans_init, dead_code_threshold=cfg.dead_code_threshold,
                        task_init=cfg.task_init, use_codes=not cfg.no_codes, backbone=cfg.model)
    vectors = description_vectors(backbone, tok, tasks) if cfg.task_init == "description" else None
    model = CTRModel(backbone, ctr_cfg, tok, task_vectors=vectors)
    if cfg.init_from:
        src = CTRModel.from_pretrained(_model_dir(cfg.init_from), backbone=backbone, tokenizer=tok)
        model.load_state_dict(src.state_dict())
    if ctr_cfg.use_codes and cfg.kmeans_init:
        model.kmeans_init()
    return model


def _model_dir(path: str) -> Path:
    """Accept a run folder (its final/ model), a checkpoint or a model folder."""
    found = find_model_dir(path)
    if found is not None:
        return found
    raise FileNotFoundError(f"--init-from {path}: no CTR model found (ctr_config.json)")


def make_optimizer(model: CTRModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    projections = {"encoder", "decoder.weight"}
    decay = [p for n, p in named if p.dim() >= 2 and n not in projections]
    proj = [p for n, p in named if n in projections]
    no_decay = [p for n, p in named if p.dim() < 2]  # biases and norms
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": proj, "weight_decay": cfg.weight_decay,
               "lr": cfg.lr * cfg.projection_lr_scale},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2))


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup, then cosine decay from 1 to min_lr_ratio."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def train(cfg: TrainConfig, tasks: list[Task] | None = None, stop_after: int | None = None,
          hooks: dict[str, Callable] | None = None) -> Path:
    """Run training; returns the folder of the final model. `stop_after` ends this call
    after that many steps without a final save (as a preempted job would)."""
    hooks = hooks or {}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    acc = Accelerator(mixed_precision=precision)
    torch.manual_seed(cfg.seed)
    tasks = tasks if tasks is not None else load_tasks(cfg, verbose=acc.is_main_process)

    resume_from = latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None and acc.is_main_process:
        print(f"[ctr] --resume: no checkpoint in {out}, starting fresh")
    if resume_from is not None:
        model = CTRModel.from_pretrained(resume_from / "model")
    else:
        model = build_model(cfg, tasks)
    if cfg.stage == 1:
        model.freeze_backbone()
    else:
        model.config.backbone_trained = True
    model.train()
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start = 0
    if resume_from is not None:
        start = load_training_state(resume_from, optimizer, scheduler)["step"]
        _truncate_metrics(out / "metrics.jsonl", start)
        if acc.is_main_process:
            print(f"[ctr] resumed from {resume_from} at step {start}")
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    core: CTRModel = acc.unwrap_model(model)
    seq2seq = is_encoder_decoder(core.backbone)
    tok = core.tokenizer
    encoded = encode_tasks(tasks, tok, cfg.max_source_len, cfg.max_target_len, seq2seq)
    sampler = MixtureSampler([len(e) for e in encoded], cfg.mixing, cfg.task_cap, cfg.seed)
    if acc.is_main_process:
        write_json(out / "train_config.json", dataclasses.asdict(cfg))
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"[ctr] stage {cfg.stage}: {len(tasks)} tasks, {n_train:,} trainable parameters, "
              f"{cfg.steps} steps x {cfg.batch_size} examples, device {acc.device}")

    n_micro = cfg.batch_size // acc.num_processes // cfg.micro_batch_size
    if n_micro < 1:
        raise ValueError(f"--batch-size {cfg.batch_size} is smaller than "
                         f"{acc.num_processes} processes x --micro-batch-size {cfg.micro_batch_size}")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"stage {cfg.stage}",
               disable=not acc.is_main_process, dynamic_ncols=True)
    last_good = None
    for step in bar:
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout and code revival, per step
        pairs = sampler.batch(step, cfg.batch_size)[acc.process_index::acc.num_processes]
        rows = [encoded[t][i] for t, i in pairs]
        n_tokens = sum(len(r.target) for r in rows)
        stats = {"loss": 0.0, "lm_loss": 0.0, "vq_loss": 0.0}
        for k in range(n_micro):
            chunk = rows[k * cfg.micro_batch_size:(k + 1) * cfg.micro_batch_size]
            batch = {n: v.to(acc.device) for n, v in collate(chunk, tok.pad_token_id, seq2seq).items()}
            if cfg.no_codes:
                batch.pop("task_ids")
            sync = acc.no_sync(model) if k < n_micro - 1 else contextlib.nullcontext()
            with sync, acc.autocast():
                o = model(**batch, target_only=cfg.target_only_logits)
                if "after_forward" in hooks:
                    o = hooks["after_forward"](step, o)
                # token-mean over the whole global batch, whatever the micro-batching
                loss = o.token_loss_sum / n_tokens + core.config.vq_weight * o.vq_loss / n_micro
                acc.backward(loss)
            stats["lm_loss"] += o.token_loss_sum.item() / n_tokens
            stats["vq_loss"] += o.vq_loss.item() / n_micro
        stats["loss"] = stats["lm_loss"] + core.config.vq_weight * stats["vq_loss"]
        grad_norm = acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                        cfg.grad_clip)
        if not (math.isfinite(stats["loss"]) and math.isfinite(float(grad_norm))):
            raise TrainingDiverged(
                f"non-finite loss/gradient at step {step} (loss {stats['loss']}, grad norm "
                f"{float(grad_norm)}); no update applied. Last good checkpoint: {last_good or 'none'}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        bar.set_postfix(loss=f"{stats['loss']:.3f}", vq=f"{stats['vq_loss']:.3f}")
        if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.steps):
            record = {"step": done, **{k: round(v, 6) for k, v in stats.items()},
                      "lr": scheduler.get_last_lr()[0], "grad_norm": round(float(grad_norm), 6),
                      "step_time": round(time.time() - t0, 4)}
            if core.config.use_codes:
                usage = code_usage(core.task_codes().cpu(), core.config.codebook_size)
                record.update(code_perplexity=usage["perplexity"], codes_in_use=usage["codes_in_use"],
                              distinct_values=usage["distinct_values"])
            append_jsonl(out / "metrics.jsonl", record)
        if done % cfg.save_every == 0 and done < cfg.steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                last_good = out / f"checkpoint-{done:07d}"
                save_checkpoint(last_good, core, optimizer, scheduler, done,
                                {"config": dataclasses.asdict(cfg)})
                prune_checkpoints(out, cfg.keep_checkpoints)
        if stop_after is not None and done - start >= stop_after and done < cfg.steps:
            return out
    acc.wait_for_everyone()
    final = out / "final"
    if acc.is_main_process:
        core.save_pretrained(final)
        if core.config.use_codes:
            write_json(out / "code_table.json", core.code_table())
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def summarize_run(output_dir: str | Path) -> str:
    """Code table and loss-curve summary of a finished run, as Markdown."""
    out = Path(output_dir)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    lines = ["## Loss curve", "", "| step | loss | lm loss | vq loss | distinct code values |",
             "|---:|---:|---:|---:|---:|"]
    picks = sorted({0, len(records) // 4, len(records) // 2, 3 * len(records) // 4, len(records) - 1})
    for i in picks:
        r = records[i]
        lines.append(f"| {r['step']} | {r['loss']:.4f} | {r['lm_loss']:.4f} | {r['vq_loss']:.4f} | "
                     f"{r.get('distinct_values', '-')} |")
    table_path = out / "code_table.json"
    if table_path.exists():
        table = json.loads(table_path.read_text())
        lines += ["", f"## Code table ({len(table)} tasks)", "", "| task | code |", "|---|---|"]
        lines += [f"| {name} | {' '.join(map(str, code))} |" for name, code in table.items()]
    return "\n".join(lines)
