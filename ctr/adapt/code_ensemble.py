"""Code Ensemble (zero-label selection) and its options: the candidate code whose answers
agree most with the candidates' majority vote (ties: the one most confident in it).

Every (candidate, template, unlabelled input) is scored in batched passes; each input gets
a pseudo-label by majority vote over the candidates (or mean probability); the candidate
that agrees most with the pseudo-labels wins; among equals, the one giving them the highest
mean probability (`--tie-break order` keeps the candidate list's order instead). Labels are
never read: inputs are rendered through the label-free path (`render_prompts`, which only
sees an example's non-label fields). `--protocol authors` adds the released code's
gold-label filter, for audits only. `ctr zero-label` (`ctr.adapt.zero_label`) runs it
over tasks and evaluates the chosen codes.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from ctr.adapt.authors_protocol import authors_gold_indices, distribution_distance, gold_distribution
from ctr.adapt.common import AdaptCommon, selection_templates
from ctr.config import opt
from ctr.core.model import CTRModel
from ctr.inference.scoring import RankScorer, ScoreRequest, tokenize_request
from ctr.tasks.registry import get_task, render_prompts
from ctr.tasks.splits import AdaptSplit
from ctr.tasks.templates import RenderError

@dataclass
class ZeroLabelConfig(AdaptCommon):
    """Options of the Code Ensemble and of `ctr zero-label`."""

    n_inputs: int = opt(32, "unlabelled inputs used for selection")
    vote: Literal["majority", "mean_prob"] = opt("majority", "how pseudo-labels are formed")
    degenerate_threshold: float | None = opt(
        None, "drop candidates that give one answer to more than this fraction of inputs")
    tie_break: Literal["confidence", "order"] = opt(
        "confidence", "how candidates of equal agreement are ranked: confidence, by the mean "
                      "probability they give the pseudo-labels; order, by their place in the "
                      "candidate list (the training tasks' order)")
    authors_max_distance: float = opt(
        0.25, "--protocol authors only: drop candidates whose predicted answer shares lie further "
              "than this (total variation) from the gold label shares")
    output_dir: str = opt("runs/zero_label", "where selection and evaluation results go")


def select_code(model: CTRModel, task_name: str, cfg: ZeroLabelConfig,
                candidates: list[tuple[list[int], list[str]]], scorer: RankScorer,
                split: AdaptSplit | None = None) -> dict[str, Any]:
    """`split`: the selection inputs, when the caller has drawn them already (the audit)."""
    task = get_task(task_name)
    split = split if split is not None else cfg.selection_split(task, cfg.n_inputs, labelled=False)
    prompts = []  # (template name, example index, PromptedInput): no labels anywhere
    for template in selection_templates(task, cfg, split.examples):
        for index, p in render_prompts(template, split.examples):
            if not isinstance(p, RenderError):
                prompts.append((template.name, index, p))
    if not prompts:
        raise ValueError(f"{task_name}: no selection input renders with the chosen templates")
    base = [tokenize_request(model, p.input_text, p.choices, cfg.max_input_len) for _, _, p in prompts]
    reqs = [ScoreRequest(b.input_ids, b.choices, code) for code, _ in candidates for b in base]
    scores = scorer.score(reqs)
    n = len(base)
    preds = [[scores[c * n + i].prediction() for i in range(n)] for c in range(len(candidates))]
    probs = [_softmax(s.logprob) for s in scores]  # each choice's probability, per request
    share = [max(Counter(p).values()) / n for p in preds]
    degenerate = [cfg.degenerate_threshold is not None and s > cfg.degenerate_threshold for s in share]
    if cfg.protocol == "authors":  # the released code's gold-label filter (reads labels)
        gold = authors_gold_indices(task, split.examples, prompts, cfg.data_dir)
        shares = gold_distribution(gold)
        degenerate = [d or distribution_distance(p, shares) > cfg.authors_max_distance
                      for d, p in zip(degenerate, preds)]
    voters = [c for c in range(len(candidates)) if not degenerate[c]] or list(range(len(candidates)))
    pseudo = []
    for i in range(n):
        if cfg.vote == "majority":
            votes = Counter(preds[c][i] for c in voters)
            pseudo.append(min(votes, key=lambda a: (-votes[a], a)))  # ties: lowest choice index
        else:
            k = len(base[i].choices)
            mean = [sum(probs[c * n + i][a] for c in voters) for a in range(k)]
            pseudo.append(max(range(k), key=mean.__getitem__))
    names = sorted({t for t, _, _ in prompts})
    ranked = []
    for c, (code, tasks) in enumerate(candidates):
        agree = [preds[c][i] == pseudo[i] for i in range(n)]
        # agreement is a count out of n: with a few inputs dozens of candidates tie, and the
        # list order would hand the pick to the alphabetically first task
        confidence = sum(probs[c * n + i][pseudo[i]] for i in range(n)) / n
        per_template = {t: sum(a for a, (tn, _, _) in zip(agree, prompts) if tn == t)
                        / sum(1 for tn, _, _ in prompts if tn == t) for t in names}
        ranked.append({"code": code, "tasks": tasks, "agreement": sum(agree) / n,
                       "confidence": confidence, "majority_share": share[c], "degenerate": degenerate[c],
                       "best_template": max(per_template, key=per_template.__getitem__),
                       "per_template": per_template})
    ranked.sort(key=lambda r: (r["degenerate"], -r["agreement"],
                               -r["confidence"] if cfg.tie_break == "confidence" else 0.0))
    best = ranked[0]
    return {"code": best["code"], "agreement": best["agreement"], "template": best["best_template"],
            "from_tasks": best["tasks"], "selection_source": split.source,
            "selection_indices": [e.index for e in split.examples], "exclude": split.exclude,
            "inputs": n, "templates": names, "ranked": ranked}


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]
