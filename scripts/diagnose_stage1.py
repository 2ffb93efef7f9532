"""Diagnose CTR stage 1 on SmolLM2 (issue 12) and prototype fixes, without touching ctr/.

Modes (one process, one thread, one run at a time):
  init-diag  gradients at init: d loss / d prompt, the LM and VQ terms' gradients at the
             codebook, encoder, task embeddings and decoder, norms of prompts vs tokens.
  free       plain multi-task prompt tuning: one free L x H prompt per task (the ceiling).
  ctr        CTR stage 1, the paper's parametrisation (defaults = `--preset cpu-small`
             learning rates) or a prototype fix (flags below).
  eval       SST-2 Code Ensemble with saved per-task prompts as candidates: agreement of
             each candidate with the majority vote on unlabelled SST-2 train inputs, the
             selected candidate's SST-2 validation accuracy (200 examples x templates, median).

Data: the 20-task mixture of issue 12 (9 amazon_polarity, 7 ag_news, 4 glue_qqp templates),
balanced mixing, source 128 / target 8 tokens, 100 steps x 8 examples, seed 0.

Example:
  OMP_NUM_THREADS=1 .venv/bin/python scripts/diagnose_stage1.py --mode free --lr 1e-2 \
      --out runs/diag/free_lr1e-2
  OMP_NUM_THREADS=1 .venv/bin/python scripts/diagnose_stage1.py --mode eval \
      --prompts runs/diag/free_lr1e-2/prompts.pt --out runs/diag/free_lr1e-2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctr.core.backbone import load_backbone  # noqa: E402
from ctr.train.batching import MixtureSampler, collate, encode_tasks  # noqa: E402
from ctr.config import CTRConfig, TrainConfig  # noqa: E402
from ctr.core.model import CTRModel  # noqa: E402
from ctr.core.codes import code_usage  # noqa: E402
from ctr.core.prompt_format import PromptEncoder, PromptFormat  # noqa: E402
from ctr.train.trainer import load_tasks, lr_lambda  # noqa: E402

TASKS = ([f"amazon_polarity_{t}" for t in (
    "Is_this_product_review_positive", "Is_this_review", "Is_this_review_negative",
    "User_recommend_this_product", "convey_negative_or_positive_sentiment", "flattering_or_not",
    "negative_or_positive_tone", "user_satisfied", "would_you_buy")]
    + [f"ag_news_{t}" for t in ("classify", "classify_question_first", "classify_with_choices",
                                "classify_with_choices_question_first", "recommend", "which_section",
                                "which_section_choices")]
    + [f"glue_qqp_{t}" for t in ("answer", "duplicate", "duplicate_or_not", "meaning")])


# ---------------------------------------------------------------------------------------
def setup(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    names = args.tasks or TASKS
    cfg = TrainConfig(tasks=names, max_source_len=args.source_len, max_target_len=args.target_len,
                      mixing="balanced", stage=1, preset="cpu-small", steps=args.steps,
                      batch_size=args.batch, micro_batch_size=args.batch, seed=args.seed,
                      warmup_steps=args.warmup)
    tasks = load_tasks(cfg, verbose=False)
    if sorted(t.name for t in tasks) != sorted(names):
        raise SystemExit(f"--tasks: loaded {[t.name for t in tasks]}, asked for {names}")
    backbone, tok = load_backbone(args.model)
    backbone.requires_grad_(False)
    return cfg, tasks, backbone, tok


def batches(cfg, tasks, tok):
    encoded = encode_tasks(tasks, PromptEncoder(tok, PromptFormat(), False), cfg.max_source_len,
                           cfg.max_target_len)
    sampler = MixtureSampler([len(e) for e in encoded], cfg.mixing, cfg.task_cap, cfg.seed)

    def get(step):
        rows = [encoded[t][i] for t, i in sampler.batch(step, cfg.batch_size)]
        return collate(rows, tok.pad_token_id, False)
    return get


def token_stats(backbone):
    E = backbone.get_input_embeddings().weight.detach()
    n = E.norm(dim=1)
    return {"token_row_norm_mean": float(n.mean()), "token_row_norm_median": float(n.median()),
            "token_coord_std": float(E.std()), "token_mean_vector_norm": float(E.mean(0).norm())}


def lm_loss_with_prompt(wrapper: CTRModel, batch, prompt):
    """Mean target-token CE with a per-row prompt [B, L, H] (the CTR forward's path)."""
    out = wrapper(batch["input_ids"], batch["attention_mask"], batch["labels"], prompt=prompt)
    return out.lm_loss


def vocab_rows(backbone, n, gen):
    E = backbone.get_input_embeddings().weight.detach()
    return E[torch.randint(E.shape[0], (n,), generator=gen)].clone().float()


# ---------------------------------------------------------------------------------------
# CTR variants: a real CTRModel (the paper parametrisation) with optional changes.
def build_ctr(args, backbone, tok, tasks):
    ccfg = CTRConfig(code_length=args.L, codebook_size=args.K, task_names=[t.name for t in tasks],
                     quantizer=args.quantizer, kmeans_init=False, beta=args.beta,
                     vq_weight=args.vq_weight, ema_decay=args.ema_decay,
                     dead_code_threshold=args.dead_code_threshold, backbone=args.model,
                     encoder_init_std=args.encoder_init_std)
    model = CTRModel(backbone, ccfg, tok)
    model.freeze_backbone()
    gen = torch.Generator().manual_seed(args.seed + 1)
    H = backbone.get_input_embeddings().embedding_dim
    tok_norm = token_stats(backbone)["token_row_norm_mean"]
    with torch.no_grad():
        cb = model.quantizer.weight
        if args.codebook_init == "vocab":  # K random token embeddings
            cb.copy_(vocab_rows(backbone, args.K, gen))
        elif args.codebook_init == "free":  # k-means of a free-prompt run's prompt rows
            from vector_quantize_pytorch.vector_quantize_pytorch import kmeans
            rows = torch.load(args.warm_start)["prompts"].reshape(-1, H).float()
            if len(rows) >= args.K:
                means, _ = kmeans(rows[None], args.K, 10)
                cb.copy_(means[0])
            else:
                cb.copy_(torch.cat([rows, vocab_rows(backbone, args.K - len(rows), gen)]))
        if args.quantizer == "ema":
            model.quantizer.vq._codebook.embed_avg.copy_(model.quantizer.vq._codebook.embed)
        if args.decoder_init == "identity":
            model.decoder.weight.copy_(torch.eye(H))
        elif args.decoder_init == "scaled":  # default init, rescaled so prompt rows ~ token rows
            q = cb
            scale = tok_norm / (q @ model.decoder.weight.t()).norm(dim=1).mean()
            model.decoder.weight.mul_(scale)
        if args.z_init == "codebook":
            # encoder = min-norm solution of e_t W_i = codebook[c_ti] for random distinct-ish
            # codes c: every task starts exactly on a code (VQ loss 0), codes spread out.
            if args.task_embed_norm:
                e = model.task_embedding.weight
                e.mul_(args.task_embed_norm / e.norm(dim=1, keepdim=True))
            e = model.task_embedding.weight  # [T, E]
            T = e.shape[0]
            perm = torch.randperm(args.K * ((T * args.L) // args.K + 1), generator=gen) % args.K
            codes = perm[: T * args.L].reshape(T, args.L)
            if args.warm_start and args.codebook_init == "free":
                codes = model.quantizer.nearest(torch.load(args.warm_start)["prompts"].float())
            pinv = torch.linalg.pinv(e)  # [E, T]
            for i in range(args.L):
                model.encoder[i].copy_(pinv @ cb[codes[:, i]])
    return model


def prompts_of(model: CTRModel, task_ids, args):
    """(prompt [B, L, H], codes, vq loss) with the variant's gradient path."""
    z = model.encode_tasks(task_ids)
    out = model.quantizer(z)
    q = out.quantized
    if args.codebook_lm_grad:  # forward: the code vectors; gradient to both codebook and z
        q = model.quantizer.weight[out.codes] + (z - z.detach())
    return model.decoder(q), out.codes, out.loss


def ctr_groups(model, args):
    wd = args.weight_decay
    g = [{"params": [model.task_embedding.weight], "lr": args.lr_task, "weight_decay": wd, "name": "task"},
         {"params": [model.encoder], "lr": args.lr_encoder, "weight_decay": wd, "name": "encoder"},
         {"params": [model.decoder.weight], "lr": args.lr_decoder, "weight_decay": wd, "name": "decoder"}]
    if args.quantizer == "plain":
        g.append({"params": [model.quantizer.codebook], "lr": args.lr_codebook,
                  "weight_decay": wd, "name": "codebook"})
    return [x for x in g if x["lr"] > 0]


def all_prompts(model, args):
    with torch.no_grad():
        ids = torch.arange(model.config.num_tasks)
        codes = model.task_codes()
        return model.decoder(model.quantizer.lookup(codes)), codes


# ---------------------------------------------------------------------------------------
def norms(named):
    return {n: (float(t.norm()) if t is not None else 0.0) for n, t in named.items()}


def init_diag(args):
    cfg, tasks, backbone, tok = setup(args)
    get = batches(cfg, tasks, tok)
    model = build_ctr(args, backbone, tok, tasks)
    model.eval()
    res = {"tokens": token_stats(backbone), "batches": []}
    P, codes = all_prompts(model, args)
    with torch.no_grad():
        z = model.encode_tasks(torch.arange(len(tasks)))
    res["init"] = {"soft_prompt_row_norm": float(P.norm(dim=-1).mean()),
                   "z_row_norm": float(z.norm(dim=-1).mean()),
                   "codebook_row_norm": float(model.quantizer.weight.norm(dim=-1).mean()),
                   "task_embedding_row_norm": float(model.task_embedding.weight.norm(dim=-1).mean()),
                   "decoder_gain": float((model.quantizer.weight @ model.decoder.weight.t()).norm(dim=-1).mean()
                                         / model.quantizer.weight.norm(dim=-1).mean()),
                   "distinct_values": int(codes.unique().numel()),
                   "mean_pairwise_prompt_distance": float(torch.cdist(P.reshape(len(tasks), -1), P.reshape(len(tasks), -1)).sum() / (len(tasks) * (len(tasks) - 1)))}
    gen = torch.Generator().manual_seed(args.seed)
    free = vocab_rows(backbone, args.L, gen)
    params = {"task_embedding": model.task_embedding.weight, "encoder": model.encoder,
              "decoder": model.decoder.weight, "codebook": model.quantizer.weight}
    for s in range(args.diag_batches):
        b = get(s)
        tid = b.pop("task_ids")
        prompt, codes, vq = prompts_of(model, tid, args)
        prompt.retain_grad()
        lm = lm_loss_with_prompt(model, b, prompt)
        g_lm = torch.autograd.grad(lm, [prompt, *params.values()], retain_graph=True, allow_unused=True)
        g_vq = torch.autograd.grad(vq * args.vq_weight, list(params.values()), allow_unused=True)
        fp = free.clone().requires_grad_(True)
        lm_free = lm_loss_with_prompt(model, b, fp.expand(len(tid), -1, -1))
        (g_free,) = torch.autograd.grad(lm_free, [fp])
        row = {"lm_loss": float(lm), "vq_loss": float(vq), "lm_loss_free_vocab_prompt": float(lm_free),
               "grad_prompt_lm": float(g_lm[0].norm()),
               "grad_prompt_lm_per_row": float(g_lm[0].norm(dim=-1).mean()),
               "grad_free_prompt_per_row": float(g_free.norm(dim=-1).mean() / len(tid)),
               "grad_lm": norms(dict(zip(params, g_lm[1:]))),
               "grad_vq": norms(dict(zip(params, g_vq)))}
        row["vq_share"] = {n: row["grad_vq"][n] / max(1e-12, row["grad_vq"][n] + row["grad_lm"][n])
                           for n in params}
        res["batches"].append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "init_diag.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res["init"], indent=1), json.dumps(res["tokens"]))


# ---------------------------------------------------------------------------------------
def train(args):
    cfg, tasks, backbone, tok = setup(args)
    get = batches(cfg, tasks, tok)
    T, L = len(tasks), args.L
    H = backbone.get_input_embeddings().embedding_dim
    gen = torch.Generator().manual_seed(args.seed)
    if args.mode == "free":
        wrapper = CTRModel(backbone, CTRConfig(use_codes=False, backbone=args.model), tok)
        wrapper.freeze_backbone()
        if args.warm_start:
            init = torch.load(args.warm_start)["prompts"].float()
        else:
            init = vocab_rows(backbone, T * L, gen).reshape(T, L, H)
        free = torch.nn.Parameter(init)
        groups = [{"params": [free], "lr": args.lr, "weight_decay": 0.0, "name": "prompt"}]
        model = wrapper
    else:
        model = build_ctr(args, backbone, tok, tasks)
        groups = ctr_groups(model, args)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    trainable = [p for g in groups for p in g["params"]]
    model.train()

    def current():
        if args.mode == "free":
            return free.detach().clone(), None
        return all_prompts(model, args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "w")
    prev, prev_codes = current()
    t_all = time.time()
    records = []
    for step in range(args.steps):
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        b = get(step)
        tid = b.pop("task_ids")
        if args.mode == "free":
            prompt, vq = free[tid], torch.zeros(())
        else:
            prompt, _, vq = prompts_of(model, tid, args)
        prompt.retain_grad()
        lm = lm_loss_with_prompt(model, b, prompt)
        loss = lm + args.vq_weight * vq
        loss.backward()
        gnorms = {g["name"]: float(torch.stack([p.grad.norm() for p in g["params"] if p.grad is not None]).norm())
                  if any(p.grad is not None for p in g["params"]) else 0.0 for g in groups}
        g_prompt = float(prompt.grad.norm(dim=-1).mean())
        total = torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        now, codes = current()
        rel = ((now - prev).norm(dim=(1, 2)) / prev.norm(dim=(1, 2)).clamp(min=1e-12))
        # the task-specific part: change of (prompt - mean prompt over tasks)
        d_spec = (now - now.mean(0)) - (prev - prev.mean(0))
        rel_spec = d_spec.norm(dim=(1, 2)) / prev.norm(dim=(1, 2)).clamp(min=1e-12)
        rec = {"step": step + 1, "lm_loss": round(float(lm.detach()), 4), "vq_loss": round(float(vq.detach()), 4),
               "grad_norm": round(float(total), 4), "grad_prompt_row": g_prompt,
               "grad": gnorms, "rel_prompt_change_mean": float(rel.mean()),
               "rel_prompt_change_batch_tasks": float(rel[tid.unique()].mean()),
               "rel_prompt_change_task_specific": float(rel_spec.mean()),
               "prompt_row_norm": float(now.norm(dim=-1).mean()),
               "lr": sched.get_last_lr()[0], "step_time": round(time.time() - t0, 2)}
        if codes is not None:
            rec["distinct_values"] = int(codes.unique().numel())
            rec["codes_changed"] = int((codes != prev_codes).sum())
            with torch.no_grad():
                z = model.encode_tasks(torch.arange(T))
            rec["z_row_norm"] = float(z.norm(dim=-1).mean())
            rec["codebook_row_norm"] = float(model.quantizer.weight.norm(dim=-1).mean())
            rec["z_to_code_dist"] = float((z - model.quantizer.lookup(codes)).norm(dim=-1).mean())
        prev, prev_codes = now, codes
        records.append(rec)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step + 1}: lm {rec['lm_loss']:.3f} vq {rec['vq_loss']:.3f} "
                  f"dprompt {rec['rel_prompt_change_batch_tasks']:.4f} pnorm {rec['prompt_row_norm']:.2f} "
                  f"vals {rec.get('distinct_values', '-')} {rec['step_time']}s", flush=True)
    prompts, codes = current()
    flat = prompts.reshape(T, -1)
    summary = {"args": vars(args), "tasks": [t.name for t in tasks], "seconds": round(time.time() - t_all, 1),
               "sec_per_step": round((time.time() - t_all) / args.steps, 2),
               "lm_loss_first": records[0]["lm_loss"],
               "lm_loss_last10_mean": statistics.mean(r["lm_loss"] for r in records[-10:]),
               "lm_loss_last": records[-1]["lm_loss"],
               "vq_loss_first": records[0]["vq_loss"], "vq_loss_last": records[-1]["vq_loss"],
               "prompt_row_norm": float(prompts.norm(dim=-1).mean()),
               "mean_pairwise_prompt_distance": float(torch.cdist(flat, flat).sum() / (T * (T - 1))),
               "rel_prompt_change_median": statistics.median(r["rel_prompt_change_batch_tasks"] for r in records)}
    if codes is not None:
        usage = code_usage(codes, args.K)
        summary.update(distinct_values=usage["distinct_values"], codes=codes.tolist())
    summary["rel_prompt_change_task_specific_median"] = statistics.median(
        r["rel_prompt_change_task_specific"] for r in records)
    summary["train_loss_full"] = full_train_loss(model, get, prompts, args)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    torch.save({"prompts": prompts.float(), "tasks": [t.name for t in tasks],
                "codes": None if codes is None else codes}, out / "prompts.pt")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("args", "tasks", "codes")}, indent=1))


@torch.no_grad()
def full_train_loss(model, get, prompts, args):
    """LM loss of the final prompts on a fixed held-in probe: the batches of steps
    10000..10000+n (same sampler, different steps), less noisy than the last step."""
    model.eval()
    tot, n = 0.0, 0
    for s in range(args.probe_batches):
        b = get(10_000 + s)
        tid = b.pop("task_ids")
        out = model(b["input_ids"], b["attention_mask"], b["labels"], prompt=prompts[tid])
        tot += float(out.token_loss_sum)
        n += int(out.target_tokens.sum())
    model.train()
    return round(tot / max(n, 1), 4)


# ---------------------------------------------------------------------------------------
def evaluate_prompts(args):
    from ctr.tasks.registry import get_task, render_prompts
    from ctr.inference.evaluate import EvalConfig, evaluate
    from ctr.inference.scoring import RankScorer, tokenize_request
    from ctr.tasks.splits import unlabeled_inputs
    from ctr.tasks.templates import RenderError
    from ctr.adapt.common import selection_templates
    from ctr.adapt.zero_label import ZeroLabelConfig
    torch.set_num_threads(args.threads)
    backbone, tok = load_backbone(args.model)
    model = CTRModel(backbone, CTRConfig(use_codes=False, backbone=args.model), tok)
    model.eval()
    data = torch.load(args.prompts) if args.prompts else {"prompts": None, "tasks": []}
    P, names = data["prompts"], data["tasks"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    task = get_task("glue_sst2")
    res = {"prompts": args.prompts, "git_head": os.popen("git log --oneline -1").read().strip()}
    ecfg = dict(suite="near", tasks=["glue_sst2"], max_examples=args.eval_examples, seed=0,
                output_dir=str(out))
    if P is None:  # the backbone alone
        r = evaluate(model, EvalConfig(**ecfg), progress=False)
        res["sst2"] = r["tasks"]["glue_sst2"]["median"]
        res["per_template"] = {k: v["accuracy"] for k, v in r["tasks"]["glue_sst2"]["templates"].items()}
    else:
        zcfg = ZeroLabelConfig(suite="near", tasks=["glue_sst2"], max_templates=None,
                               n_inputs=args.n_inputs)
        split = unlabeled_inputs(task, args.n_inputs, 0)
        prompts = []
        for template in selection_templates(task, zcfg, split.examples):
            for index, p in render_prompts(template, split.examples):
                if not isinstance(p, RenderError):
                    prompts.append((template.name, index, p))
        import inspect
        if "model" in inspect.signature(tokenize_request).parameters:  # one prompt format
            base = [tokenize_request(model, p.input_text, list(p.choices), zcfg.max_input_len)
                    for _, _, p in prompts]
        else:
            base = [tokenize_request(tok, p.input_text, list(p.choices), False, zcfg.max_input_len,
                                     zcfg.target_delimiter) for _, _, p in prompts]
        preds = []
        for c in range(len(P)):
            sc = RankScorer(model, 32, False, P[c]).score(base)
            preds.append([s.prediction() for s in sc])
            print(f"[eval] candidate {c + 1}/{len(P)} scored ({time.time() - t0:.0f}s)", flush=True)
        n = len(base)
        pseudo = []
        for i in range(n):
            votes = Counter(p[i] for p in preds)
            pseudo.append(min(votes, key=lambda a: (-votes[a], a)))
        agree = [sum(p[i] == pseudo[i] for i in range(n)) / n for p in preds]
        share = [max(Counter(p).values()) / n for p in preds]
        best = max(range(len(P)), key=lambda c: (agree[c], -c))
        res.update(selection_inputs=n, templates=sorted({t for t, _, _ in prompts}),
                   agreement={nm: round(a, 4) for nm, a in zip(names, agree)},
                   majority_share={nm: round(s, 4) for nm, s in zip(names, share)},
                   mean_agreement=round(statistics.mean(agree), 4), best_agreement=round(agree[best], 4),
                   selected=names[best],
                   distinct_prediction_vectors=len({tuple(p) for p in preds}))
        picks = {names[best]}
        if args.eval_also:
            picks |= {nm for nm in names if any(nm.startswith(pref) for pref in args.eval_also)}
        res["sst2_by_candidate"] = {}
        for nm in sorted(picks):
            r = evaluate(model, EvalConfig(**ecfg), progress=False, prompts={"glue_sst2": P[names.index(nm)]})
            res["sst2_by_candidate"][nm] = {"median": r["tasks"]["glue_sst2"]["median"],
                                            "per_template": {k: v["accuracy"] for k, v in
                                                             r["tasks"]["glue_sst2"]["templates"].items()}}
        res["sst2"] = res["sst2_by_candidate"][names[best]]["median"]
    res["seconds"] = round(time.time() - t0, 1)
    name = args.eval_name or "eval.json"
    (out / name).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("agreement", "majority_share")}, indent=1))


# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["init-diag", "free", "ctr", "eval"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", default=None, help="training tasks (default: the issue's 20)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--source-len", type=int, default=128)
    ap.add_argument("--target-len", type=int, default=8)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--probe-batches", type=int, default=8, help="batches for the final train-loss probe")
    ap.add_argument("--diag-batches", type=int, default=3)
    # free prompts
    ap.add_argument("--lr", type=float, default=1e-2, help="free-prompt lr")
    ap.add_argument("--warm-start", default=None, help="prompts.pt of a free-prompt run")
    # CTR
    ap.add_argument("--L", type=int, default=10)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--quantizer", choices=["plain", "ema"], default="plain")
    ap.add_argument("--ema-decay", type=float, default=0.8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--vq-weight", type=float, default=1.0)
    ap.add_argument("--dead-code-threshold", type=float, default=0.0)
    ap.add_argument("--encoder-init-std", type=float, default=0.1)
    ap.add_argument("--lr-task", type=float, default=1e-2, help="cpu-small: lr")
    ap.add_argument("--lr-encoder", type=float, default=1e-4, help="cpu-small: lr x 0.01")
    ap.add_argument("--lr-decoder", type=float, default=1e-4, help="cpu-small: lr x 0.01")
    ap.add_argument("--lr-codebook", type=float, default=1e-2, help="cpu-small: lr")
    ap.add_argument("--decoder-init", choices=["default", "identity", "scaled"], default="default")
    ap.add_argument("--codebook-init", choices=["default", "vocab", "free"], default="default")
    ap.add_argument("--z-init", choices=["default", "codebook"], default="default")
    ap.add_argument("--task-embed-norm", type=float, default=None)
    ap.add_argument("--codebook-lm-grad", action="store_true",
                    help="the codebook also gets the LM gradient (forward unchanged)")
    # eval
    ap.add_argument("--prompts", default=None, help="prompts.pt (none: the bare backbone)")
    ap.add_argument("--n-inputs", type=int, default=32)
    ap.add_argument("--eval-examples", type=int, default=200)
    ap.add_argument("--eval-also", nargs="*", default=[], help="also evaluate candidates with these name prefixes")
    ap.add_argument("--eval-name", default=None)
    args = ap.parse_args(argv)
    if args.mode == "init-diag":
        init_diag(args)
    elif args.mode == "eval":
        evaluate_prompts(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
