"""Zero-label adaptation: Code Ensemble (`ctr zero-label`).

Candidates are the distinct codes of the training tasks. Every (candidate, template,
unlabelled input) is scored in batched passes; each input gets a pseudo-label by majority
vote over the candidates (or mean probability); the candidate that agrees most with the
pseudo-labels wins. Labels are never read: inputs are rendered through the label-free
path (`render_prompts`, which only sees an example's non-label fields), and inputs taken
from the evaluation split are excluded from evaluation.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ctr.adapt.authors_protocol import (authors_gold_indices, check_protocol, distribution_distance,
                               gold_distribution, label_balanced_eval)
from ctr.config import opt
from ctr.tasks.registry import (get_task, list_tasks, render_prompts, select_templates, task_templates,
                         usable_templates)
from ctr.inference.evaluate import EvalConfig, evaluate, load_for_eval, markdown_table
from ctr.fileio import codes_file_content, read_codes_file, write_json
from ctr.core.model import CTRModel
from ctr.inference.scoring import RankScorer, ScoreRequest, tokenize_request
from ctr.tasks.splits import AdaptSplit, few_shot, unlabeled_inputs
from ctr.tasks.templates import RenderError


@dataclass
class AdaptCommon:
    """Options shared by the adaptation commands."""

    checkpoint: str = opt("runs/ctr", "CTR checkpoint: a run folder, its final/ or a model folder")
    suite: Literal["t0", "near"] = opt("t0", "task suite")
    tasks: list[str] = opt([], "tasks to adapt to (default: the whole suite)")
    templates: list[str] = opt([], "template names (default: usable original-task templates)")
    max_templates: int | None = opt(3, "use the first N usable templates for selection (speed)")
    candidates_file: str | None = opt(None, "JSON {name: code} of candidate codes, or a codes.json "
                                            "(default: the checkpoint's training-task codes)")
    seed: int = opt(0, "seed for the selection inputs / shots")
    batch_size: int = opt(16, "inputs per scoring batch")
    max_input_len: int = opt(1024, "input tokens kept (from the end)")
    max_examples: int | None = opt(None, "evaluate on a seeded subsample of N examples per task")
    eval_max_templates: int | None = opt(None, "evaluate with the first N usable templates only")
    no_eval: bool = opt(False, "only select; do not evaluate")
    data_dir: str | None = opt(None, "data folder (default: $CTR_DATA_DIR or ../shared/data)")
    output_dir: str = opt("runs/adapt", "where selection and evaluation results go")
    protocol: Literal["ours", "authors"] = opt(
        "ours", "ours: selection never reads labels or evaluation examples; authors: the released "
                "code's protocol (selection examples from the evaluation set, label-balanced, "
                "candidates filtered by gold label shares), for audits only")

    def __post_init__(self) -> None:
        check_protocol(self.protocol)

    def selection_split(self, task, n: int, labelled: bool) -> AdaptSplit:
        """The examples selection may use (n unlabelled inputs, or n labelled shots)."""
        if self.protocol == "authors":
            return label_balanced_eval(task, n, self.seed, self.data_dir)
        return (few_shot if labelled else unlabeled_inputs)(task, n, self.seed, self.data_dir)

    def eval_config(self, tasks: list[str], out: Path, **kw: Any) -> EvalConfig:
        """The evaluation that follows an adaptation: same examples, templates, seed."""
        return EvalConfig(model=self.checkpoint, suite=self.suite, tasks=tasks, templates=self.templates,
                          max_templates=self.eval_max_templates, max_examples=self.max_examples,
                          seed=self.seed, exclude_indices=str(out / "exclude.json"),
                          batch_size=self.batch_size, max_input_len=self.max_input_len,
                          data_dir=self.data_dir,
                          output_dir=str(out), **kw)


def prepare_adaptation(cfg: AdaptCommon
                       ) -> tuple[CTRModel, list[str], list[tuple[list[int], list[str]]], RankScorer, Path]:
    """Model, task names, candidate codes, scorer and output folder of an adaptation run."""
    model = load_for_eval(cfg.checkpoint)
    if not model.config.use_codes:
        raise ValueError(f"--checkpoint {cfg.checkpoint}: a model without codes has no codes to adapt")
    tasks = [get_task(t).name for t in (cfg.tasks or [t.name for t in list_tasks(cfg.suite)])]
    candidates = candidate_codes(model, cfg.candidates_file)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return model, tasks, candidates, RankScorer(model, cfg.batch_size), out


@dataclass
class ZeroLabelConfig(AdaptCommon):
    n_inputs: int = opt(32, "unlabelled inputs used for selection")
    vote: Literal["majority", "mean_prob"] = opt("majority", "how pseudo-labels are formed")
    degenerate_threshold: float | None = opt(
        None, "drop candidates that give one answer to more than this fraction of inputs")
    authors_max_distance: float = opt(
        0.25, "--protocol authors only: drop candidates whose predicted answer shares lie further "
              "than this (total variation) from the gold label shares")
    output_dir: str = opt("runs/zero_label", "where selection and evaluation results go")


def candidate_codes(model: CTRModel, candidates_file: str | None = None) -> list[tuple[list[int], list[str]]]:
    """Distinct candidate codes, each with the training tasks that have it."""
    table = (read_codes_file(candidates_file, "--candidates-file")[0] if candidates_file
             else model.code_table())
    if not table:
        raise ValueError("no candidate codes: the checkpoint has no training tasks; pass --candidates-file")
    grouped: dict[tuple[int, ...], list[str]] = {}
    for name, code in table.items():
        try:
            model.check_codes(torch.tensor(code))
        except ValueError as e:
            where = f"--candidates-file {candidates_file}" if candidates_file else "code table"
            raise ValueError(f"{where}: {name}: {e}") from None
        grouped.setdefault(tuple(code), []).append(name)
    return [(list(c), names) for c, names in grouped.items()]


def selection_templates(task, cfg: AdaptCommon, examples, labelled: bool = False) -> list:
    """The templates to select with, first N, judged on the selection examples themselves
    (never on evaluation examples): for unlabelled inputs label-free (the prompt and
    choices render); for labelled shots as `ctr eval` judges, with the shots' labels."""
    if labelled:
        templates = usable_templates(task, names=cfg.templates or None, root=cfg.data_dir,
                                     examples=examples).usable
    else:
        templates = task_templates(task, cfg.data_dir)
        templates = (select_templates(templates, cfg.templates) if cfg.templates
                     else [t for t in templates if t.original_task])
        templates = [t for t in templates
                     if any(not isinstance(p, RenderError) for _, p in render_prompts(t, examples))]
    return templates[: cfg.max_templates] if cfg.max_templates else templates


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
            mean = [sum(_softmax(scores[c * n + i].logprob)[a] for c in voters) for a in range(k)]
            pseudo.append(max(range(k), key=mean.__getitem__))
    names = sorted({t for t, _, _ in prompts})
    ranked = []
    for c, (code, tasks) in enumerate(candidates):
        agree = [preds[c][i] == pseudo[i] for i in range(n)]
        per_template = {t: sum(a for a, (tn, _, _) in zip(agree, prompts) if tn == t)
                        / sum(1 for tn, _, _ in prompts if tn == t) for t in names}
        ranked.append({"code": code, "tasks": tasks, "agreement": sum(agree) / n,
                       "majority_share": share[c], "degenerate": degenerate[c],
                       "best_template": max(per_template, key=per_template.__getitem__),
                       "per_template": per_template})
    ranked.sort(key=lambda r: (r["degenerate"], -r["agreement"]))
    best = ranked[0]
    return {"code": best["code"], "agreement": best["agreement"], "template": best["best_template"],
            "from_tasks": best["tasks"], "selection_source": split.source,
            "selection_indices": [e.index for e in split.examples], "exclude": split.exclude,
            "inputs": n, "templates": names, "ranked": ranked}


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def run_zero_label(cfg: ZeroLabelConfig) -> dict[str, Any]:
    model, tasks, candidates, scorer, out = prepare_adaptation(cfg)
    selection = {}
    for name in tasks:
        selection[name] = select_code(model, name, cfg, candidates, scorer)
        s = selection[name]
        print(f"[zero-label] {name}: code {','.join(map(str, s['code']))} (from {s['from_tasks'][0]}"
              f"{' +%d' % (len(s['from_tasks']) - 1) if len(s['from_tasks']) > 1 else ''}), agreement "
              f"{s['agreement']:.2f} over {s['inputs']} inputs x templates, {len(candidates)} candidates",
              flush=True)
    write_json(out / "zero_label.json", {"config": dataclasses.asdict(cfg), "tasks": selection})
    # codes.json carries its exclusions: `ctr eval --codes-file` alone keeps them out
    write_json(out / "codes.json", codes_file_content({t: s["code"] for t, s in selection.items()},
                                                      {t: s["exclude"] for t, s in selection.items()}))
    write_json(out / "exclude.json", {t: s["exclude"] for t, s in selection.items()})
    if cfg.no_eval:
        return {"selection": selection}
    res = evaluate(model, cfg.eval_config(tasks, out, codes_file=str(out / "codes.json")))
    res["zero_label"] = {t: {k: v for k, v in s.items() if k != "ranked"} for t, s in selection.items()}
    write_json(out / "results.json", res)
    table = markdown_table(res)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return {"selection": selection, "results": res}
