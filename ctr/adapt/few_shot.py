"""`ctr few-shot`: Bitwise Search from k labelled shots, with its baselines.

For each task: k label-balanced shots (train split; or part of validation, then kept out
of evaluation), rendered with the selection templates. Reported side by side through the
evaluation harness: the best training-task code ("discrete search only"), the Bitwise
Search code, and optionally prompt tuning on the same shots.
"""
from __future__ import annotations

import dataclasses
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


from ctr.adapt.bitwise_search import Shot, ShotObjective
from ctr.config import opt
from ctr.tasks.registry import get_task, render_task
from ctr.inference.evaluate import evaluate
from ctr.tasks.registry import PAPER_REFERENCE
from ctr.core.codes import codes_file_content
from ctr.fileio import write_json
from ctr.provenance import provenance
from ctr.core.model import CTRModel
from ctr.adapt.prompt_tuning import tune_prompt
from ctr.inference.scoring import RankScorer, tokenize_request
from ctr.tasks.splits import AdaptSplit
from ctr.adapt.common import AdaptCommon, prepare_adaptation, selection_templates
from ctr.adapt.guided_search import check_guide, check_top, make_guide, resolve_top, run_search


@dataclass
class FewShotConfig(AdaptCommon):
    shots: int = opt(32, "labelled shots per task (label-balanced, seeded)")
    objective: Literal["loss", "accuracy"] = opt("loss", "summed target loss, or errors (loss breaks ties)")
    values: Literal["all", "seen"] = opt(
        "all", "values tried per position: all K, or those seen there in training codes")
    max_sweeps: int = opt(20, "maximum sweeps over the positions")
    guide: Literal["none", "gradient"] = opt(
        "none", "none: score every value of a position exactly; gradient: rank them by a first-order "
                "estimate from one backward pass and score only the best --guide-top exactly "
                "(ctr.adapt.guided_search)")
    guide_top: int | None = opt(None, "--guide gradient: values scored exactly per position, 1 to "
                                      "K-1 (K-1 scores every value, as --guide none); default 8, "
                                      "or K-1 if smaller")
    holdout: float = opt(0.0, "fraction of shots held out: the search runs on the rest and the "
                              "returned code is the trajectory point best on the held-out shots")
    prompt_tuning: bool = opt(False, "also train and evaluate a continuous prompt on the same shots")
    prompt_steps: int = opt(50, "prompt-tuning steps")
    prompt_lr: float = opt(3e-3, "prompt-tuning learning rate")
    output_dir: str = opt("runs/few_shot", "where trajectories, codes and results go")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_guide(self.guide)
        if self.guide_top is not None:  # its upper bound (K - 1) once the model is loaded
            check_top(self.guide_top)


def make_shots(model: CTRModel, task, examples, templates, cfg: AdaptCommon) -> list[Shot]:
    shots = []
    for template in templates:
        instances, _ = render_task(task, template, examples)
        for i in instances:
            r = tokenize_request(model, i.prompt.input_text, i.prompt.choices, cfg.max_input_len)
            shots.append(Shot(r.input_ids, r.choices, i.label_index))
    return shots


def seen_values(candidates: list[tuple[list[int], list[str]]], L: int) -> list[list[int]]:
    return [sorted({code[p] for code, _ in candidates}) for p in range(L)]


def adapt_task(model: CTRModel, name: str, cfg: FewShotConfig,
               candidates: list[tuple[list[int], list[str]]], scorer: RankScorer, out: Path,
               split: AdaptSplit | None = None) -> dict[str, Any]:
    """`split`: the shots, when the caller has drawn them already (the audit)."""
    task = get_task(name)
    split = split if split is not None else cfg.selection_split(task, cfg.shots, labelled=True)
    examples = list(split.examples)
    if not examples:
        raise ValueError(f"{name}: no shots drawn (--shots {cfg.shots}, source {split.source})")
    held: list = []
    if cfg.holdout > 0:
        random.Random(cfg.seed).shuffle(examples)
        n_held = max(1, round(cfg.holdout * len(examples)))
        held, examples = examples[:n_held], examples[n_held:]
        if not examples:
            raise ValueError(f"{name}: --holdout {cfg.holdout} holds out all {len(held)} shots and "
                             f"leaves none to search with (raise --shots or lower --holdout)")
    templates = selection_templates(task, cfg, split.examples, labelled=True)  # judged on the shots
    search_shots = make_shots(model, task, examples, templates, cfg)
    if not search_shots:
        raise ValueError(f"{name}: no search shots rendered (--shots {cfg.shots}: {len(examples)} "
                         f"examples, {len(templates)} templates)")
    search_obj = ShotObjective(scorer, search_shots, cfg.objective)
    L, K = model.config.code_length, model.config.codebook_size
    values = seen_values(candidates, L) if cfg.values == "seen" else [list(range(K))] * L
    t0 = time.time()
    # a trajectory is replayed only for the same shots, objective and checkpoint
    from ctr.adapt.bitwise_search import fingerprint
    from ctr.core.loading import find_model_dir
    folder = find_model_dir(cfg.checkpoint)
    files = sorted(f for f in folder.rglob("*") if f.is_file()) if folder else []
    checkpoint_id = {"path": str(folder.resolve()) if folder else cfg.checkpoint,
                     "files": [[str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns]
                               for f in files],
                     "code_table": model.code_table(), "backbone": model.config.backbone}
    guide = make_guide(cfg.guide, model, search_shots, cfg.guide_top, cfg.batch_size)
    result, report = run_search(search_obj, [c for c, _ in candidates], values, guide, cfg.max_sweeps,
                                cfg.seed, trajectory_path=out / f"trajectory_{name}.jsonl",
                                objective_id=fingerprint([search_obj.fingerprint(), checkpoint_id]))
    chosen, how = result.code, "search objective"
    held_scores = None
    if held:
        held_shots = make_shots(model, task, held, templates, cfg)
        if not held_shots:
            raise ValueError(f"{name}: no held-out shots rendered (--holdout {cfg.holdout}: "
                             f"{len(held)} examples, {len(templates)} templates)")
        held_obj = ShotObjective(scorer, held_shots, cfg.objective)
        visited = [result.start_code] + [r["code"] for r in result.trajectory[1:] if r.get("accepted")]
        held_scores = held_obj(visited)
        chosen = visited[min(range(len(visited)), key=lambda i: (held_scores[i], -i))]
        how = "held-out shots"
    start_tasks = next(t for c, t in candidates if c == result.start_code)
    return {"code": chosen, "chosen_by": how, "start_code": result.start_code, "start_tasks": start_tasks,
            "start_objective": result.start_objective, "search_code": result.code,
            "search_objective": result.objective, "sweeps": result.sweeps,
            "codes_scored": result.evaluations, "seconds": round(time.time() - t0, 1),
            "held_out_objectives": held_scores, "shots": [e.index for e in split.examples],
            "shot_source": split.source, "exclude": split.exclude,
            "templates": [t.name for t in templates], "search_shots": len(search_obj.shots),
            "search": report}


def run_few_shot(cfg: FewShotConfig) -> dict[str, Any]:
    model, tasks, candidates, scorer, out = prepare_adaptation(cfg)
    if cfg.guide == "gradient":  # before any shot is drawn
        resolve_top(cfg.guide_top, model.config.codebook_size)
    adapted = {}
    for name in tasks:
        adapted[name] = a = adapt_task(model, name, cfg, candidates, scorer, out)
        print(f"[few-shot] {name}: start {a['start_code']} ({a['start_tasks'][0]}, objective "
              f"{a['start_objective']:.3f}) -> {a['search_code']} (objective {a['search_objective']:.3f}) "
              f"in {a['sweeps']} sweeps, {a['codes_scored']} codes, {a['seconds']}s "
              f"(--guide {cfg.guide})", flush=True)
    write_json(out / "few_shot.json", {"config": dataclasses.asdict(cfg), "tasks": adapted,
                                       "provenance": provenance()})
    exclude = {t: a["exclude"] for t, a in adapted.items()}  # carried by the codes files
    write_json(out / "codes.json", codes_file_content({t: a["code"] for t, a in adapted.items()}, exclude))
    write_json(out / "codes_discrete.json",
               codes_file_content({t: a["start_code"] for t, a in adapted.items()}, exclude))
    write_json(out / "exclude.json", {t: a["exclude"] for t, a in adapted.items()})
    if cfg.no_eval:
        return {"adapted": adapted}

    def eval_with(codes_file: str | None = None, prompts=None) -> dict[str, Any]:
        return evaluate(model, cfg.eval_config(tasks, out, codes_file=codes_file), prompts=prompts)
    runs = {"bitwise": eval_with(codes_file=str(out / "codes.json")),
            "discrete": eval_with(codes_file=str(out / "codes_discrete.json"))}
    if cfg.prompt_tuning:
        prompts = {}
        for name in tasks:
            task = get_task(name)
            split = cfg.selection_split(task, cfg.shots, labelled=True)
            shots = make_shots(model, task, split.examples,
                               selection_templates(task, cfg, split.examples, labelled=True), cfg)
            prompts[name] = tune_prompt(model, shots, model.config.code_length, cfg.prompt_steps,
                                        cfg.prompt_lr, adapted[name]["start_code"], cfg.seed)
        runs["prompt_tuning"] = eval_with(prompts=prompts)
    summary = {"config": dataclasses.asdict(cfg), "adapted": adapted, "runs": runs,
               "provenance": provenance()}
    write_json(out / "results.json", summary)
    table = few_shot_table(runs)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return summary


def few_shot_table(runs: dict[str, dict[str, Any]]) -> str:
    names = list(runs)
    tasks = list(next(iter(runs.values()))["tasks"])
    head = ["task"] + [f"{n} (median)" for n in names] + ["paper CTR few-shot"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in tasks:
        row = [t] + [f"{runs[n]['tasks'][t]['median']:.1f}" for n in names]
        ref = PAPER_REFERENCE.get(t)
        lines.append("| " + " | ".join(row + [f"{ref[1]:.1f}" if ref else "-"]) + " |")
    avg = ["**average**"] + [f"{statistics.mean(runs[n]['tasks'][t]['median'] for t in tasks):.1f}"
                              for n in names]
    refs = [PAPER_REFERENCE[t][1] for t in tasks if t in PAPER_REFERENCE]
    lines.append("| " + " | ".join(avg + [f"{statistics.mean(refs):.1f}" if refs else "-"]) + " |")
    return "\n".join(lines)
