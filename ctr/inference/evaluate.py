"""T0-style evaluation (`ctr eval`): rank classification per template, medians per task.

The same harness scores (a) a bare backbone (zero-shot prompted baseline), (b) a CTR
checkpoint with a code per task, (c) a multi-task fine-tuned checkpoint without codes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctr.config import opt
from ctr.inference.scope import EvalScope
from ctr.tasks.registry import (PAPER_REFERENCE, get_task, list_tasks, load_examples, render_task,
                               select_templates, task_templates, usable_templates)
from ctr.fileio import read_json, write_json
from ctr.core.codes import parse_code, read_codes_file
from ctr.core.loading import load_model
from ctr.core.model import CTRModel
from ctr.inference.scoring import RankScorer, tokenize_request
from ctr.provenance import hardware, provenance  # hardware: re-exported for older imports

@dataclass
class EvalConfig(EvalScope):
    model: str = opt("smollm2", "backbone (name, folder, hub id) or a CTR / multi-task checkpoint folder")
    all_templates: bool = opt(False, "use every usable template, not only original-task ones")
    max_templates: int | None = opt(None, "use only the first N usable templates per task (quick runs)")
    exclude_indices: str | None = opt(
        None, "JSON {task: [example index, ...]} kept out of evaluation (used for selection)")
    code: str | None = opt(None, "one code for every task, e.g. 12,5,0,...")
    codes_file: str | None = opt(None, "codes.json from ctr zero-label / few-shot (its selection "
                                       "examples are excluded), or a JSON {task: code}")
    zero_shot_results: str | None = opt(None, "results.json of the bare backbone, shown as a column")
    output_dir: str = opt("runs/eval", "where results.json and results.md go")


def codes_for_tasks(model: CTRModel, cfg: EvalConfig, tasks: list[str]) -> dict[str, list[int] | None]:
    if not model.config.use_codes:
        if cfg.code or cfg.codes_file:
            raise ValueError("--code/--codes-file given, but the model has no codes")
        return {t: None for t in tasks}
    if cfg.code:
        code = parse_code(cfg.code)
        model.check_codes(torch.tensor(code))  # shape and range, with a clear message
        return {t: code for t in tasks}
    if cfg.codes_file:
        table = read_codes_file(cfg.codes_file)[0]
        missing = [t for t in tasks if t not in table]
        if missing:
            raise ValueError(f"--codes-file {cfg.codes_file}: no code for {missing}")
        for t in tasks:
            try:
                model.check_codes(torch.tensor(table[t]))
            except ValueError as e:
                raise ValueError(f"--codes-file {cfg.codes_file}: task {t}: {e}") from None
        return {t: table[t] for t in tasks}
    raise ValueError("this CTR model needs a code per task: pass --code or --codes-file "
                     "(ctr zero-label / ctr few-shot write one)")


def eval_exclusions(cfg: EvalConfig) -> dict[str, set[int]]:
    """Evaluation indices kept out, per task: --exclude-indices united with the
    exclusions a codes file from ctr zero-label / few-shot carries (its selection examples)."""
    tables = []
    if cfg.exclude_indices:
        table = read_json(cfg.exclude_indices)
        if isinstance(table, dict) and isinstance(table.get("codes"), dict):  # a codes.json
            table = table.get("exclude") or {}
        tables.append(table)
    if cfg.codes_file:
        tables.append(read_codes_file(cfg.codes_file)[1])
    out: dict[str, set[int]] = {}
    for table in tables:
        for task, indices in table.items():
            out.setdefault(task, set()).update(indices)
    return out


def fingerprint(model: CTRModel) -> dict[str, Any]:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"backbone": model.config.backbone, "use_codes": model.config.use_codes,
            "backbone_trained": model.config.backbone_trained,
            "parameters": sum(p.numel() for p in model.parameters()), "sha256": h.hexdigest()[:16]}


def seeded_subsample(examples: list, n: int | None, seed: int) -> list:
    """At most n of `examples`, drawn with `seed`, in their original order."""
    if not n or len(examples) <= n:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def eval_templates(task, cfg: EvalConfig, examples: list) -> tuple[list, Any]:
    """The templates `cfg` asks for (named, or the usable original-task ones, first N) and
    the usability report (None when named)."""
    if cfg.templates:
        return select_templates(task_templates(task, cfg.data_dir), cfg.templates), None
    report = usable_templates(task, original_only=not cfg.all_templates, root=cfg.data_dir,
                              examples=examples)
    return (report.usable[: cfg.max_templates] if cfg.max_templates else report.usable), report


def score_templates(model: CTRModel, task, templates: list, examples: list, code: list[int] | None,
                    scorer: RankScorer, cfg: EvalConfig) -> dict[str, Any]:
    """Accuracy of one code (or none, or the scorer's prompt) on `examples` under each
    template, with the median and mean over templates."""
    per_template: dict[str, Any] = {}
    for template in templates:
        instances, skipped = render_task(task, template, examples)
        if not instances:
            per_template[template.name] = {"n": 0, "skipped": dict(skipped)}
            continue
        reqs = [tokenize_request(model, i.prompt.input_text, i.prompt.choices, cfg.max_input_len, code)
                for i in instances]
        scores = scorer.score(reqs)
        gold = [i.label_index for i in instances]
        right = [s.prediction() == g for s, g in zip(scores, gold)]
        acc = sum(right) / len(gold)
        acc_norm = sum(s.prediction(True) == g for s, g in zip(scores, gold)) / len(gold)
        per_template[template.name] = {"n": len(gold), "accuracy": round(100 * acc, 2),
                                       "accuracy_norm": round(100 * acc_norm, 2),
                                       "skipped": {str(k): v for k, v in skipped.items()},
                                       # which examples (by index) were right: paired comparisons
                                       # of two runs on the same examples (bootstrap, McNemar)
                                       "indices": [i.index for i in instances],
                                       "correct": "".join("1" if r else "0" for r in right)}
    accs = [v["accuracy"] for v in per_template.values() if v["n"]]
    norms = [v["accuracy_norm"] for v in per_template.values() if v["n"]]
    return {"templates": per_template, "accuracies": accs,
            "median": round(statistics.median(accs), 2) if accs else None,
            "mean": round(statistics.mean(accs), 2) if accs else None,
            "median_norm": round(statistics.median(norms), 2) if norms else None}


def evaluate(model: CTRModel, cfg: EvalConfig, progress: bool = True,
             prompts: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Accuracy per template, medians per task. `prompts` gives a continuous prompt per
    task (prompt tuning) in place of a code."""
    tasks = cfg.tasks or [t.name for t in list_tasks(cfg.suite)]
    tasks = [get_task(t).name for t in tasks]  # unknown names: a clear error, before any work
    codes = {t: None for t in tasks} if prompts else codes_for_tasks(model, cfg, tasks)
    excluded = eval_exclusions(cfg)
    scorer = RankScorer(model, cfg.batch_size, progress)
    t_start = time.time()
    results: dict[str, Any] = {}
    for name in tasks:
        task = get_task(name)
        examples = load_examples(task, "eval", root=cfg.data_dir)
        drop = excluded.get(name, set())
        n_all = len(examples)
        examples = [e for e in examples if e.index not in drop]
        n_excluded = n_all - len(examples)
        if progress and n_excluded:
            print(f"[eval] {name}: {n_excluded} examples excluded (used for selection)", flush=True)
        examples = seeded_subsample(examples, cfg.max_examples, cfg.seed)
        templates, report = eval_templates(task, cfg, examples)
        task_scorer = RankScorer(model, scorer.batch_size, progress, prompts[name]) if prompts else scorer
        summary = score_templates(model, task, templates, examples, codes[name], task_scorer, cfg)
        per_template, accs = summary["templates"], summary["accuracies"]
        results[name] = {
            "examples": len(examples), "indices": [e.index for e in examples],
            "excluded": n_excluded,
            "code": codes[name], "templates": per_template,
            "median": summary["median"], "mean": summary["mean"], "median_norm": summary["median_norm"],
            "unusable_templates": [str(s) for s in report.skipped] if report else [],
        }
        if progress:
            print(f"[eval] {name}: median {results[name]['median']} over {len(accs)} templates "
                  f"({len(examples)} examples)", flush=True)
    medians = [r["median"] for r in results.values() if r["median"] is not None]
    return {
        "config": dataclasses.asdict(cfg), "model": fingerprint(model), "hardware": hardware(),
        "provenance": provenance(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t_start, 1),
        "tasks": results,
        "average_of_medians": round(statistics.mean(medians), 2) if medians else None,
    }


def markdown_table(res: dict[str, Any], zero_shot: dict[str, Any] | None = None) -> str:
    """Results as Markdown, with the backbone's zero-shot column and the paper's numbers."""
    cfg = res["config"]
    head = ["task", "templates", "examples", "median acc", "mean acc", "median acc (norm)"]
    if zero_shot:
        head.append("backbone zero-shot (median)")
    head += ["paper CTR zero-label", "paper CTR few-shot"]
    lines = [f"Model: `{cfg['model']}` ({res['model']['sha256']}); suite {cfg['suite']}; "
             f"max examples {cfg['max_examples']}, seed {cfg['seed']}, "
             f"templates {'max %s' % cfg['max_templates'] if cfg.get('max_templates') else 'all usable'}"
             f"; {res['seconds']} s on "
             f"{res['hardware']['cpu']} ({res['hardware'].get('gpu', 'CPU')})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(x: Any) -> str:
        return "-" if x is None else f"{x:.1f}"
    for name, r in res["tasks"].items():
        n_t = sum(1 for v in r["templates"].values() if v["n"])
        row = [name, str(n_t), str(r["examples"]), fmt(r["median"]), fmt(r["mean"]), fmt(r["median_norm"])]
        if zero_shot:
            row.append(fmt(zero_shot["tasks"].get(name, {}).get("median")))
        ref = PAPER_REFERENCE.get(name)
        row += [fmt(ref[0]) if ref else "-", fmt(ref[1]) if ref else "-"]
        lines.append("| " + " | ".join(row) + " |")
    avg = ["**average of medians**", "", "", f"**{fmt(res['average_of_medians'])}**", "", ""]
    if zero_shot:
        common = [zero_shot["tasks"][t]["median"] for t in res["tasks"] if t in zero_shot["tasks"]]
        avg.append(fmt(statistics.mean(common)) if common else "-")
    refs = [PAPER_REFERENCE[t] for t in res["tasks"] if t in PAPER_REFERENCE]
    avg += [fmt(statistics.mean(r[0] for r in refs)) if refs else "-",
            fmt(statistics.mean(r[1] for r in refs)) if refs else "-"]
    lines.append("| " + " | ".join(avg) + " |")
    return "\n".join(lines)


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    model = load_model(cfg.model, "--model")
    res = evaluate(model, cfg)
    zero = read_json(cfg.zero_shot_results) if cfg.zero_shot_results else None
    if zero is None and not model.config.use_codes and not model.config.backbone_trained \
            and not model.config.lora:
        zero = res  # the bare backbone is its own zero-shot column
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    table = markdown_table(res, zero)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"\n[eval] wrote {out / 'results.json'} and {out / 'results.md'}")
    return res
