"""Controllability: does putting another task type's code value into a task's code change
what the model generates, more than a random value at the same position does?

For each steered task: its own code ("original"), the code with the chosen positions set
to the values most specific to the target type (e.g. summarization, "steered"), and
`steer_random` codes with random other values at the same positions (the control). All
run on the same inputs, codes mixed within generation batches. Measured per output: the
generated length in tokens and whether the output is one of the task's answer choices.
Effects are paired differences of means over inputs, with seeded bootstrap 95% intervals.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctr.analysis.options import AnalyzeConfig
from ctr.analysis.stats import label_values, paired_effect
from ctr.config import read_run_config
from ctr.core.loading import load_model
from ctr.core.model import CTRModel
from ctr.fileio import write_json
from ctr.inference.generation import generate_ids_with_codes
from ctr.tasks.mixture import load_jsonl_tasks, load_t0_tasks
from ctr.tasks.registry import render_prompts, usable_templates
from ctr.tasks.splits import unlabeled_inputs
from ctr.tasks.templates import RenderError


@dataclass
class SteerInput:
    text: str
    choices: list[str] | None  # answer choices, None when the task has no closed answer set


# ---- pure parts (bootstrap intervals: stats.py) ---------------------------------------
def normalise_answer(text: str) -> str:
    return " ".join(text.split()).casefold()


def in_choices(text: str, choices: Sequence[str] | None) -> float | None:
    """1.0 when the output is one of the answer choices (case and spacing ignored)."""
    if not choices:
        return None
    return float(normalise_answer(text) in {normalise_answer(c) for c in choices})


def steer_positions(code: Sequence[int], type_values: Sequence[Any], n: int,
                    fixed: Sequence[int] = ()) -> list[int]:
    """The positions to replace: `fixed` if given, else the n positions whose type value
    is most specific (highest score) among those where the code holds another value."""
    if fixed:
        return sorted(set(fixed))
    cands = [a for a in type_values if a is not None and a.value != code[a.position]]
    cands.sort(key=lambda a: (-a.score, -a.label_count, a.position))
    return sorted(a.position for a in cands[:n])


def random_controls(code: Sequence[int], positions: Sequence[int], codebook_size: int, n: int,
                    rng: np.random.Generator) -> list[list[int]]:
    """n codes with uniformly random values at `positions`, each different from the code's
    own value (so every control is a change, like the steered code)."""
    out = []
    for _ in range(n):
        c = list(code)
        for p in positions:
            v = int(rng.integers(codebook_size - 1))
            c[p] = v + (v >= code[p])  # skip the original value
        out.append(c)
    return out


# ---- inputs ---------------------------------------------------------------------------
def _train_config(folder: Path) -> dict[str, Any]:
    """The run config of a model folder or of the run folder above it."""
    return read_run_config(folder) or read_run_config(folder.parent)


def training_inputs(folder: Path, names: list[str], data_dir: str | None
                    ) -> dict[str, tuple[list[SteerInput], str]]:
    """{task: (inputs, type)} for training tasks, read as the training run read them
    (its train_config.json: JSONL files, else the T0 sample). Choices: an example's own
    `choices`, else the task's answers when it has few distinct ones."""
    tc = _train_config(folder)
    if tc.get("train_files"):
        tasks, _ = load_jsonl_tasks(tc["train_files"])
        tasks = [t for t in tasks if t.name in set(names)]
    else:
        tasks, _ = load_t0_tasks(data_dir or tc.get("data_dir"), tasks=names)
    out = {}
    for t in tasks:
        answers = sorted(t.answer_counts) if t.answer_counts and len(t.answer_counts) > 1 else None
        out[t.name] = ([SteerInput(e.source, list(e.choices) if e.choices else answers)
                        for e in t.examples], t.task_type)
    return out


def heldout_inputs(task: str, n: int, seed: int, data_dir: str | None) -> list[SteerInput]:
    """Unlabelled inputs of a held-out task rendered with its first usable original
    template (label-free rendering; the choices come with the prompt)."""
    split = unlabeled_inputs(task, n, seed, root=data_dir)
    report = usable_templates(task, root=data_dir, examples=split.examples)
    if not report.usable:
        raise ValueError(f"--steer-tasks {task}: no usable template ({report.summary()})")
    return [SteerInput(p.input_text, list(p.choices))
            for _, p in render_prompts(report.usable[0], split.examples)
            if not isinstance(p, RenderError)]


def default_tasks(inputs: dict[str, tuple[list[SteerInput], str]], steer_type: str,
                  k: int = 3) -> list[str]:
    """Up to k training tasks with answer choices and another type, one per type first."""
    by_type: dict[str, list[str]] = {}
    for name in sorted(inputs):
        ex, ttype = inputs[name]
        if ttype != steer_type and ex and ex[0].choices:
            by_type.setdefault(ttype, []).append(name)
    picked: list[str] = []
    queues = [by_type[t] for t in sorted(by_type)]
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop(0))
    return picked


# ---- the experiment -------------------------------------------------------------------
def generate_metrics(model: CTRModel, inputs: list[SteerInput], codes: list[list[int]],
                     max_new_tokens: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(lengths [codes, inputs], in-choices [codes, inputs] (nan: no choices), texts):
    every code on every input, in mixed-code batches."""
    rows_text = [x.text for _ in codes for x in inputs]
    rows_code = torch.tensor([c for c in codes for _ in inputs])
    ids = generate_ids_with_codes(model, rows_text, rows_code, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size)
    texts = [model.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    lengths = np.array([len(x) for x in ids], dtype=np.float64).reshape(len(codes), len(inputs))
    fmt = [in_choices(t, inputs[i % len(inputs)].choices) for i, t in enumerate(texts)]
    fmt_arr = np.array([np.nan if f is None else f for f in fmt]).reshape(len(codes), len(inputs))
    return lengths, fmt_arr, texts


def task_effects(lengths: np.ndarray, fmt: np.ndarray, n_boot: int, seed: int
                 ) -> dict[str, dict[str, dict[str, float]]]:
    """Rows: 0 original, 1 steered, 2.. random controls (averaged per input)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, m in (("length", lengths), ("answer_format", fmt)):
        if np.isnan(m).any():
            continue
        orig, steered, rand = m[0], m[1], m[2:].mean(0)
        out[metric] = {"steered_vs_random": paired_effect(steered, rand, n_boot, seed),
                       "steered_vs_original": paired_effect(steered, orig, n_boot, seed),
                       "random_vs_original": paired_effect(rand, orig, n_boot, seed)}
    return out


def run_steering(cfg: AnalyzeConfig, folder: Path, table: dict[str, list[int]],
                 types: list[str], adapted: dict[str, list[int]]) -> dict[str, Any]:
    names = list(table)
    codes = np.array([table[n] for n in names], dtype=np.int64)
    if cfg.steer_type not in types:
        raise ValueError(f"--steer-type {cfg.steer_type!r}: no training task has this type "
                         f"(types: {sorted(set(types))}; --types-file names types of JSONL tasks)")
    for n in (cfg.steer_inputs, cfg.steer_random, cfg.steer_n_positions, cfg.bootstrap):
        if n < 1:
            raise ValueError("--steer-inputs, --steer-random, --steer-n-positions and "
                             "--bootstrap must be >= 1")
    L = codes.shape[1]
    bad = [p for p in cfg.steer_positions if not 0 <= p < L]
    if bad:
        raise ValueError(f"--steer-positions {bad}: positions lie in [0, {L})")
    type_values = label_values(codes, types, cfg.steer_type)
    unknown = [t for t in cfg.steer_tasks if t not in table and t not in adapted]
    if unknown:
        raise ValueError(f"--steer-tasks {unknown}: neither training tasks of the checkpoint "
                         "nor tasks of --codes-file")
    train_names = [t for t in cfg.steer_tasks if t in table] if cfg.steer_tasks else names
    # (only adapted tasks to steer: read no training data; an empty list would mean "all")
    inputs = {k: v[0] for k, v in training_inputs(folder, train_names, cfg.data_dir).items()} \
        if train_names else {}
    chosen = cfg.steer_tasks or default_tasks(
        {k: (v, types[names.index(k)]) for k, v in inputs.items()}, cfg.steer_type)
    if not chosen:
        raise ValueError("no task to steer: pass --steer-tasks (no training task of another "
                         "type has answer choices)")
    model = load_model(str(folder))
    K = model.config.codebook_size
    rng = np.random.default_rng(cfg.seed)
    results: dict[str, Any] = {}
    pooled: dict[str, dict[str, list[float]]] = {}
    outputs = []
    missing = [t for t in chosen if t in table and t not in inputs]
    if missing:
        raise ValueError(f"--steer-tasks {missing}: no examples found for these training tasks")
    for task in chosen:
        code = table[task] if task in table else adapted[task]
        pool = inputs[task] if task in inputs else heldout_inputs(task, cfg.steer_inputs, cfg.seed,
                                                                  cfg.data_dir)
        pool = random.Random(cfg.seed).sample(pool, min(cfg.steer_inputs, len(pool)))
        positions = steer_positions(code, type_values, cfg.steer_n_positions, cfg.steer_positions)
        if not positions:
            results[task] = {"code": code, "skipped": f"the code already holds every "
                                                      f"{cfg.steer_type} value"}
            continue
        steered = list(code)
        for p in positions:  # the type has tasks, so every position has a type value
            steered[p] = type_values[p].value
        controls = random_controls(code, positions, K, cfg.steer_random, rng)
        all_codes = [list(code), steered] + controls
        lengths, fmt, texts = generate_metrics(model, pool, all_codes, cfg.steer_max_new_tokens,
                                               cfg.steer_batch_size)
        effects = task_effects(lengths, fmt, cfg.bootstrap, cfg.seed)
        kinds = ["original", "steered"] + [f"random_{i}" for i in range(len(controls))]
        results[task] = {
            "code": list(code), "positions": positions, "steered_code": steered,
            "random_codes": controls, "n_inputs": len(pool),
            "choices_known": not np.isnan(fmt).any(),
            "means": {"original": _means(lengths[0], fmt[0]), "steered": _means(lengths[1], fmt[1]),
                      "random": _means(lengths[2:].ravel(), fmt[2:].ravel())},
            "effects": effects,
        }
        for metric, m in (("length", lengths), ("answer_format", fmt)):
            if not np.isnan(m).any():
                pooled.setdefault(metric, {"steered": [], "random": [], "original": []})
                pooled[metric]["steered"] += m[1].tolist()
                pooled[metric]["random"] += m[2:].mean(0).tolist()
                pooled[metric]["original"] += m[0].tolist()
        for k, kind in enumerate(kinds):
            for i in range(len(pool)):
                outputs.append({"task": task, "kind": kind, "code": all_codes[k], "input": i,
                                "output": texts[k * len(pool) + i], "tokens": int(lengths[k, i]),
                                "in_choices": None if np.isnan(fmt[k, i]) else bool(fmt[k, i])})
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "steering_outputs.json", outputs)
    return {
        "type": cfg.steer_type, "seed": cfg.seed, "bootstrap": cfg.bootstrap,
        "max_new_tokens": cfg.steer_max_new_tokens, "random_controls": cfg.steer_random,
        "type_values": [None if a is None else a.to_dict() for a in type_values],
        "tasks": results,
        "pooled": {m: {"steered_vs_random": paired_effect(v["steered"], v["random"], cfg.bootstrap,
                                                          cfg.seed),
                       "steered_vs_original": paired_effect(v["steered"], v["original"],
                                                            cfg.bootstrap, cfg.seed)}
                   for m, v in pooled.items()},
    }


def _means(lengths: np.ndarray, fmt: np.ndarray) -> dict[str, float | None]:
    return {"length": float(lengths.mean()),
            "answer_format": None if np.isnan(fmt).any() else float(fmt.mean())}


def _ci(e: dict[str, float], digits: int = 2) -> str:
    return f"{e['diff']:+.{digits}f} [{e['ci_low']:+.{digits}f}, {e['ci_high']:+.{digits}f}]"


def steering_markdown(res: dict[str, Any]) -> str:
    lines = [f"## Steering toward {res['type']}", "",
             f"Each task's code has its chosen positions set to the value most specific to "
             f"{res['type']} (*steered*), or to random other values at the same positions "
             f"({res['random_controls']} codes, *random*). Length is in generated tokens "
             f"(at most {res['max_new_tokens']}); *format* is the fraction of outputs that are "
             f"one of the task's answer choices. Differences are steered minus random, paired "
             f"over inputs, with bootstrap 95% intervals ({res['bootstrap']} resamples).", "",
             "| task | replaced (position: value -> value) | inputs | length orig / steered / "
             "random | length diff [95% CI] | format orig / steered / random | format diff [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for task, r in res["tasks"].items():
        if "skipped" in r:
            lines.append(f"| {task} | skipped: {r['skipped']} | | | | | |")
            continue
        swaps = ", ".join(f"{p}: {r['code'][p]} -> {r['steered_code'][p]}" for p in r["positions"])
        m = r["means"]
        length = r["effects"]["length"]["steered_vs_random"]
        fmt = r["effects"].get("answer_format", {}).get("steered_vs_random")
        fmts = (f"{m['original']['answer_format']:.2f} / {m['steered']['answer_format']:.2f} / "
                f"{m['random']['answer_format']:.2f}" if fmt else "- (no choices)")
        lines.append(f"| {task} | {swaps} | {r['n_inputs']} | {m['original']['length']:.1f} / "
                     f"{m['steered']['length']:.1f} / {m['random']['length']:.1f} | {_ci(length)} "
                     f"| {fmts} | {_ci(fmt) if fmt else '-'} |")
    for metric, e in res["pooled"].items():
        lines.append(f"\nAll tasks pooled, {metric}: steered minus random {_ci(e['steered_vs_random'])}; "
                     f"steered minus original {_ci(e['steered_vs_original'])} "
                     f"(n = {e['steered_vs_random']['n']} inputs).")
    lines.append("\nAn interval that excludes 0 means the type value changed the outputs more "
                 "than a random value at the same positions did.")
    return "\n".join(lines)
