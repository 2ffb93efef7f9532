"""Scoring harness vs a naive scorer, side by side in one run.

    python -m ctr.bench.score [--model smollm2] [--per-task 20] [--batch-size 16]

The mix: the first `--per-task` evaluation examples of each of the 11 held-out T0 tasks,
each rendered with its task's first usable original-task template. The naive scorer runs
one full forward per (example, choice), concatenating input and choice, with
full-vocabulary logits; the harness (ctr.inference.scoring.RankScorer) processes each input once.
Last line: `score_speedup=<naive time / harness time> same_predictions=<true|false>`.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ctr.tasks.registry import list_tasks, load_examples, render_task, usable_templates
from ctr.bench.report import emit
from ctr.provenance import provenance
from ctr.core.loading import load_model
from ctr.inference.scoring import RankScorer, ScoreRequest, tokenize_request


@torch.no_grad()
def naive_scores(model, requests: list[ScoreRequest]) -> list[list[float]]:
    """The reference: input + choice in one sequence, one pass per choice, all logits."""
    bb = model.backbone
    out = []
    for r in requests:
        scores = []
        for c in r.choices:
            logits = model.adapter.reference_choice_logits(bb, r.input_ids, c)  # [len(c), V]
            scores.append(float(F.log_softmax(logits.float(), -1).gather(1, torch.tensor(c)[:, None]).sum()))
        out.append(scores)
    return out


def build_mix(model, per_task: int) -> tuple[list[ScoreRequest], dict[str, str]]:
    reqs, used = [], {}
    for task in list_tasks("t0"):
        examples = load_examples(task, "eval", max_examples=per_task, seed=None)
        template = usable_templates(task, examples=examples).usable[0]
        used[task.name] = template.name
        instances, _ = render_task(task, template, examples)
        reqs += [tokenize_request(model, i.prompt.input_text, i.prompt.choices) for i in instances]
    return reqs, used


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--per-task", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    model = load_model(args.model).eval()
    if model.config.use_codes:
        raise SystemExit("--model: the benchmark compares backbones without codes")
    reqs, templates = build_mix(model, args.per_task)
    RankScorer(model, args.batch_size, progress=False).score(reqs[:4])  # warm-up, both paths
    naive_scores(model, reqs[:2])
    t0 = time.perf_counter()
    fast = RankScorer(model, args.batch_size, progress=False).score(reqs)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = naive_scores(model, reqs)
    t_slow = time.perf_counter() - t0
    pred_fast = [s.prediction() for s in fast]
    pred_slow = [max(range(len(s)), key=s.__getitem__) for s in slow]
    same = pred_fast == pred_slow
    max_diff = max(abs(a - b) for f, s in zip(fast, slow) for a, b in zip(f.logprob, s))
    result = {"model": args.model, "requests": len(reqs), "choices": sum(len(r.choices) for r in reqs),
              "templates": templates, "harness_seconds": round(t_fast, 2),
              "naive_seconds": round(t_slow, 2), "score_speedup": round(t_slow / t_fast, 2),
              "same_predictions": same, "max_abs_logprob_diff": max_diff,
              "batch_size": args.batch_size, "provenance": provenance()}
    emit(result, args.out)
    print(f"score_speedup={result['score_speedup']:.2f} same_predictions={str(same).lower()}")


if __name__ == "__main__":
    main()
