"""Free per-task prompts (`ctr free-prompts`): multi-task prompt tuning of a frozen LM, the
ceiling of any stage-1 codebook.

One free L x H prompt per training task, trained on the training mixture with the backbone
frozen: the same tasks, sampler and batches as `ctr train --stage 1` at the same seed, but
each task's prompt is a free tensor instead of a code. A code's prompt can do no better
than its task's free prompt, so how far these prompts carry to a held-out task bounds what
stage 1 can reach there.

The prompts are saved as a CTR model folder (`final/`) in which every task's code picks its
own free prompt (`prompts_as_ctr_model`): `ctr zero-label --checkpoint OUTPUT_DIR` then
scores them with the very Code Ensemble that scores the codes, and `ctr eval --codes-file`,
`ctr export` and `ctr analyze` read them like any checkpoint.

Output folder: `train_config.json` (these options, `"method": "free_prompts"`),
`metrics.jsonl` (one record per step), `summary.json` (losses at the end, the held-in probe)
and `final/`.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctr.adapt.prompt_tuning import token_embedding_rows
from ctr.config import CTRConfig, MixtureOptions, opt, parse_delimiter
from ctr.core.backbone import default_device, load_backbone
from ctr.core.model import CTRModel
from ctr.core.model_card import CardInfo
from ctr.core.prompt_format import PromptEncoder
from ctr.fileio import append_jsonl, write_json
from ctr.provenance import provenance
from ctr.tasks.mixture import load_tasks
from ctr.train.batching import MixtureSampler, collate, encode_tasks
from ctr.train.trainer import lr_lambda

METHOD = "free_prompts"  # the `method` train_config.json records, so readers tell these runs apart
PROBE_OFFSET = 10_000  # the held-in probe reads the sampler's batches from this step on


@dataclass
class FreePromptConfig(MixtureOptions):
    """Multi-task prompt tuning of a frozen backbone (`ctr free-prompts`); the mixture options
    are `ctr.config.MixtureOptions`."""

    output_dir: str = opt("runs/free_prompts", "folder for train_config.json, metrics.jsonl, "
                                               "summary.json and the prompts as a CTR model (final/)")
    model: str = opt("smollm2", "backbone: 'smollm2' (embedded default), a local HF folder or a hub id")
    prompt_length: int = opt(10, "prompt vectors per task (the code length L it is compared with)")
    steps: int = opt(100, "optimizer steps")
    batch_size: int = opt(8, "examples per step (one forward pass)")
    lr: float = opt(1e-2, "peak learning rate")
    warmup_steps: int = opt(10, "linear warmup steps")
    min_lr_ratio: float = opt(0.1, "cosine decay ends at this fraction of the peak lr")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "gradient norm clip")
    probe_batches: int = opt(8, "batches of the held-in probe: the final prompts' LM loss on "
                                "batches the run never trained on (same sampler, later steps)")
    target_delimiter: str = opt(
        "\\n", "text between an input and its target for decoder-only backbones, as `ctr train "
               "--target-delimiter` (backslash escapes are read: '\\n', '\\t')")
    seed: int = opt(0, "random seed (data order and the prompts' initial token embeddings)")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "prompt_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.probe_batches < 0:
            raise ValueError(f"--probe-batches must be >= 0, got {self.probe_batches}")
        self.check_mixture()


def initial_prompts(model: CTRModel, tasks: int, length: int, seed: int) -> torch.Tensor:
    """[tasks, length, H]: the start of `ctr.adapt.prompt_tuning` (random token embeddings
    of the backbone, seeded) for every task at once."""
    rows = token_embedding_rows(model, tasks * length, torch.Generator().manual_seed(seed))
    return rows.float().reshape(tasks, length, -1)


def train_free_prompts(cfg: FreePromptConfig) -> dict[str, Any]:
    """Train the prompts, save them as a CTR model in OUTPUT_DIR/final; returns the summary."""
    torch.manual_seed(cfg.seed)
    tasks = load_tasks(cfg)
    backbone, tok = load_backbone(cfg.model)
    delimiter = parse_delimiter(cfg.target_delimiter)
    model = CTRModel(backbone, CTRConfig(use_codes=False, backbone=cfg.model, target_delimiter=delimiter), tok)
    model.to(default_device())
    model.freeze_backbone()
    model.train()
    encoded = encode_tasks(tasks, PromptEncoder.for_model(model), cfg.max_source_len, cfg.max_target_len)
    sampler = MixtureSampler([len(e) for e in encoded], cfg.mixing, cfg.task_cap, cfg.seed)

    def batch(step: int) -> dict[str, torch.Tensor]:
        rows = [encoded[t][i] for t, i in sampler.batch(step, cfg.batch_size)]
        return {k: v.to(model.device) for k, v in collate(rows, tok.pad_token_id, model.adapter).items()}

    prompts = torch.nn.Parameter(initial_prompts(model, len(tasks), cfg.prompt_length, cfg.seed))
    opt_ = torch.optim.AdamW([prompts], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_, lr_lambda(cfg))  # the schedule of `ctr train`
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train_config.json", {"method": METHOD, **dataclasses.asdict(cfg)})
    (out / "metrics.jsonl").unlink(missing_ok=True)
    losses, start = [], time.time()
    for step in range(cfg.steps):
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, as `ctr train` reseeds it
        b = batch(step)
        ids = b.pop("task_ids")
        loss = model(**b, prompt=prompts[ids]).lm_loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([prompts], cfg.grad_clip)
        opt_.step()
        sched.step()
        opt_.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        append_jsonl(out / "metrics.jsonl", {"step": step + 1, "lm_loss": round(losses[-1], 6),
                                             "lr": sched.get_last_lr()[0], "grad_norm": round(float(norm), 6),
                                             "step_time": round(time.time() - t0, 4)})
    final = prompts.detach()
    summary = {"tasks": [t.name for t in tasks], "seconds": round(time.time() - start, 1),
               "lm_loss_first": losses[0], "lm_loss_last10_mean": statistics.mean(losses[-10:]),
               "probe_lm_loss": probe_loss(model, final, batch, cfg.probe_batches),
               "prompt_row_norm": float(final.norm(dim=-1).mean()), "provenance": provenance()}
    write_json(out / "summary.json", summary)
    wrapped = prompts_as_ctr_model(final, [t.name for t in tasks], model)
    wrapped.save_pretrained(out / "final", card=CardInfo(
        stage=1, task_types={t.name: t.task_type for t in tasks}, metrics={"lm_loss_last10": summary["lm_loss_last10_mean"]}))
    return summary


@torch.no_grad()
def probe_loss(model: CTRModel, prompts: torch.Tensor, batch, n: int) -> float | None:
    """Target-token LM loss of the final prompts on n batches the run never trained on."""
    total, tokens = 0.0, 0
    for s in range(n):
        b = batch(PROBE_OFFSET + s)
        ids = b.pop("task_ids")
        out = model(**b, prompt=prompts[ids])
        total += float(out.token_loss_sum)
        tokens += int(out.target_tokens.sum())
    return round(total / tokens, 4) if tokens else None


@torch.no_grad()
def prompts_as_ctr_model(prompts: torch.Tensor, tasks: list[str], base: CTRModel) -> CTRModel:
    """A CTR model over `base`'s backbone in which task t's code is (tL, ..., tL + L - 1) and
    selects prompts[t] exactly as its soft prompt.

    The codebook holds the T x L prompt vectors and the decoder is the identity; each task
    embedding is a unit vector (task_embed_dim = T), so the encoder's row t at position i is
    task t's i-th prompt vector and every task encodes exactly onto its own code (or onto an
    identical row: two prompt vectors still equal, e.g. one token drawn twice for the start and
    never trained, share the lowest index). Checked before it is returned: every task's soft
    prompt is its prompt."""
    T, L, H = prompts.shape
    if len(tasks) != T:
        raise ValueError(f"{T} prompts for {len(tasks)} task names")
    cfg = CTRConfig(code_length=L, codebook_size=T * L, code_dim=H, task_embed_dim=T, task_names=list(tasks),
                    decoder_init="identity", backbone=base.config.backbone,
                    target_delimiter=base.config.target_delimiter, target_eos=base.config.target_eos)
    model = CTRModel(base.backbone, cfg, base.tokenizer).to(base.device)
    book = prompts.float().reshape(T * L, H).to(base.device)
    model.quantizer.set_codebook(book)
    model.task_embedding.weight.copy_(torch.eye(T))
    model.encoder.copy_(prompts.float().transpose(0, 1))  # [L, T, H]: row t of position i
    soft = model.soft_prompt(T, torch.arange(T, device=base.device))[0].float().cpu()
    err = (soft - prompts.float().cpu()).abs().max().item()
    if err > 1e-5:
        raise ValueError(f"the wrapped soft prompts differ from the prompts by {err:.2e}")
    return model
