"""`ctr synth`: do CTR codes compose? A from-scratch experiment on the synthetic suite.

A tiny backbone (decoder-only `llama` or seq2seq `t5`, char tokenizer) is trained from
random weights together with the code module on the training combinations of
`ctr.experiments.synth_tasks` (the trainer's `--joint` mode, JSONL task path). Then, for every
held-out combination, exact-match accuracy (greedy generation) on unseen inputs under:
- the best training code: lowest summed target loss on the k shots (the search's start);
- Bitwise Search from the k shots (`ctr.adapt.bitwise_search`);
- the gradient-guided Bitwise Search (`ctr.adapt.guided_search`, --guide-top values scored
  per position) from the same start, with its evaluation count, time and ranking recall
  next to the exhaustive search's;
- random codes drawn from the values the search may use (the control);
- prompt tuning on the same shots (`ctr.adapt.prompt_tuning`).
Training combinations are scored with their own codes, and the codebook is compared
with the ground-truth factors position by position (`ctr.analysis.report` statistics).
"""
from __future__ import annotations

import dataclasses
import random
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ctr.experiments import synth_tasks as st
from ctr.analysis.stats import concentrated_values, position_association
from ctr.train.batching import encode_tasks
from ctr.core.prompt_format import PromptEncoder
from ctr.adapt.bitwise_search import Shot, ShotObjective
from ctr.adapt.guided_search import GradientGuide, check_top, ranking_recall, run_search
from ctr.config import CTRConfig, TrainConfig, opt
from ctr.tasks.mixture import Example, Task
from ctr.fileio import write_json
from ctr.provenance import hardware, hardware_tag, provenance
from ctr.inference.generation import generate_with_codes
from ctr.core.model import CTRModel
from ctr.adapt.prompt_tuning import tune_prompt
from ctr.inference.scoring import RankScorer
from ctr.core.testing import save_tiny_backbone
from ctr.train.trainer import train
from ctr.experiments.synth_report import markdown, plot_alignment

MAX_SOURCE_LEN, MAX_TARGET_LEN = 16, 12  # inputs are 5 letters, targets at most 5 characters
MAX_NEW_TOKENS = 8
METHODS = ("own_code", "best_training_code", "bitwise_search", "guided_search", "random_code",
           "prompt_tuning")


@dataclass
class SynthConfig:
    """`ctr synth`: train on the synthetic suite from scratch and test composition."""

    preset: Literal["default", "quick"] = opt(
        "default", "sizes and budget: default (a few minutes on 2 CPU cores) or quick (tests); "
                   "explicit flags override it")
    arch: Literal["llama", "t5"] = opt("llama", "tiny backbone: llama (decoder-only) or t5 (seq2seq)")
    output_dir: str = opt("results/synth/{hardware}/{arch}", "results.json, results.md and the "
                          "PNG ({arch} and {hardware}, e.g. cpu or h100, are replaced)")
    run_dir: str = opt("runs/synth/{arch}", "training data, backbones and checkpoints; model "
                                            "weights go here, never to --output-dir")
    seeds: list[int] = opt([0, 1], "training seeds (backbone init, data order, search, random "
                                   "codes); one full run each, the tables average them")
    split_seed: int = opt(0, "seed of the held-out split and of all inputs (the same suite for "
                             "every training seed)")
    primitives: list[str] = opt([], "use only these primitives, e.g. tf-keep tf-rev (a factor not "
                                    "named keeps all of its own); default: all")
    heldout: int = opt(6, "held-out combinations")
    hidden: int = opt(64, "backbone hidden size")
    layers: int = opt(2, "backbone layers")
    train_examples: int = opt(300, "training examples per training combination")
    eval_examples: int | None = opt(None, "evaluation inputs per combination, never a training "
                                          "or shot input (preset default: 50, quick: 30)")
    shots: int = opt(16, "labelled shots per held-out combination")
    steps: int | None = opt(None, "optimizer steps (preset default: 10000, quick: 2500)")
    batch_size: int = opt(32, "examples per optimizer step")
    lr: float = opt(3e-3, "peak learning rate (backbone and codes alike)")
    warmup_steps: int = opt(100, "linear warmup steps")
    code_length: int = opt(6, "code length L")
    codebook_size: int = opt(16, "codebook size K")
    task_init: Literal["random", "description"] = opt("random", "task-embedding init (as ctr train)")
    values: Literal["all", "seen"] = opt(
        "seen", "values the search (and the random control) may put at a position: all K, or those "
                "seen there in training codes (a composition of known values)")
    max_sweeps: int = opt(5, "Bitwise Search: maximum sweeps over the positions")
    # 5: the smallest top within 0.03 of the exhaustive search on both archs (3 misses on llama;
    # scripts/synth_guide_sweep.py, results/synth/README.md)
    guide_top: int = opt(5, "guided search: values scored exactly per position, 1 to K-1 (ranked by "
                            "the gradient; ctr.adapt.guided_search)")
    random_draws: int = opt(5, "random codes per held-out combination (accuracy is their mean)")
    prompt_steps: int | None = opt(None, "prompt-tuning steps (preset default: 100, quick: 50)")
    # Soft prompts here have norms ~40 per vector: at 1e-2, 100 Adam steps hardly moved them
    # (prompt tuning then scored exactly like its start code); 0.1 fits the shots.
    prompt_lr: float = opt(0.1, "prompt-tuning learning rate")
    permutations: int = opt(200, "label shuffles for the chance level of mutual information")
    threads: int = opt(1, "torch CPU threads (a tiny model runs fastest on one)")

    def __post_init__(self) -> None:
        if self.preset not in SYNTH_PRESETS:
            raise ValueError(f"--preset must be one of {tuple(SYNTH_PRESETS)}, got {self.preset!r}")
        for k, v in SYNTH_PRESETS[self.preset].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        for name in ("hidden", "layers", "train_examples", "eval_examples", "shots", "steps",
                     "batch_size", "code_length", "codebook_size", "random_draws", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.hidden % 4:
            raise ValueError(f"--hidden must be a multiple of 4 (4 attention heads), got {self.hidden}")
        check_top(self.guide_top, self.codebook_size)
        st.all_combinations(self.primitives)  # unknown primitive names fail here, before training

    def path(self, template: str) -> Path:
        return Path(template.format(arch=self.arch, hardware=hardware_tag()))


SYNTH_PRESETS: dict[str, dict[str, Any]] = {
    # 36 combinations, 6 held out: about 2.5 minutes per seed on one core of this CPU.
    "default": dict(steps=10000, eval_examples=50, prompt_steps=100),
    # The same suite with a quarter of the training (~40 s): the end-to-end test. Smaller
    # suites (2 x 2 x 2 primitives, 6 training tasks) were learned but never composed.
    "quick": dict(steps=2500, eval_examples=30, prompt_steps=50),
}


# ---- the suite ------------------------------------------------------------------------
@dataclass
class Suite:
    train: list[st.Combination]
    heldout: list[st.Combination]
    train_data: dict[str, list[st.SynthExample]]
    shots: dict[str, list[st.SynthExample]]  # held-out combinations only
    evaluation: dict[str, list[st.SynthExample]]  # every combination

    def factors(self) -> dict[str, dict[str, str]]:
        return {st.task_name(c): dict(zip(st.FACTOR_NAMES, c)) for c in self.train + self.heldout}


def build_suite(cfg: SynthConfig) -> Suite:
    train, heldout = st.split_combinations(cfg.heldout, cfg.split_seed, cfg.primitives)
    pools = st.input_pools({"train": max(cfg.train_examples, 1000), "shots": max(cfg.shots, 200),
                            "eval": cfg.eval_examples}, cfg.split_seed)

    def data(combos, pool, n):
        return {st.task_name(c): st.make_examples(c, st.sample_inputs(pools[pool], n, cfg.split_seed, c))
                for c in combos}
    return Suite(train, heldout, data(train, "train", cfg.train_examples),
                 data(heldout, "shots", cfg.shots),
                 {st.task_name(c): st.make_examples(c, pools["eval"]) for c in train + heldout})


# ---- one training seed ----------------------------------------------------------------
def train_model(cfg: SynthConfig, suite: Suite, seed: int, run: Path) -> tuple[CTRModel, Path]:
    data_file = st.write_jsonl(run / "train.jsonl", suite.train_data)
    backbone = save_tiny_backbone(run / "backbone_init", cfg.arch, hidden=cfg.hidden,
                                  layers=cfg.layers, seed=seed)
    out = run / "train"
    shutil.rmtree(out, ignore_errors=True)  # metrics.jsonl appends: start each run clean
    tcfg = TrainConfig(
        output_dir=str(out), model=str(backbone), stage=2, joint=True, preset="tiny",
        train_files=[str(data_file)], max_source_len=MAX_SOURCE_LEN, max_target_len=MAX_TARGET_LEN,
        steps=cfg.steps, batch_size=cfg.batch_size, micro_batch_size=cfg.batch_size, lr=cfg.lr,
        warmup_steps=cfg.warmup_steps, projection_lr_scale=1.0, weight_decay=0.0,
        mixing="balanced", seed=seed,
        # the authors' module; k-means init: the default uniform(+-100/K) codebook sits far
        # from the encodings of a small model, and every task would then snap to the same few values
        ctr=CTRConfig(code_length=cfg.code_length, codebook_size=cfg.codebook_size, kmeans_init=True,
                      task_init=cfg.task_init),
        # padded passes, as the committed results were made: packing changes float rounding
        # only, but this small run's search results move with it (rows are short here anyway)
        packing="no",
        log_every=max(1, cfg.steps // 100), save_every=cfg.steps + 1)  # no mid-run checkpoints
    final = train(tcfg)
    return CTRModel.from_pretrained(final).eval(), final


def copy_metrics(run: Path, out: Path, seed: int) -> None:
    """The trainer's loss curve next to the results (small; the weights stay in run_dir)."""
    shutil.copyfile(run / "train" / "metrics.jsonl", out / f"metrics_seed{seed}.jsonl")


def exact_match(model: CTRModel, examples: list[st.SynthExample], codes=None, prompt=None
                ) -> list[bool]:
    """Greedy generation under one code, one code per example, or a continuous prompt."""
    outs = generate_with_codes(model, [e.input for e in examples], codes,
                               max_new_tokens=MAX_NEW_TOKENS, batch_size=512, prompt=prompt)
    return [o == e.target for o, e in zip(outs, examples)]


def make_shots(model: CTRModel, examples: list[st.SynthExample]) -> list[Shot]:
    """Shots tokenised exactly as training tokenised its examples (`encode_tasks`)."""
    task = Task("shots", [Example(e.input, e.target) for e in examples])
    rows = encode_tasks([task], PromptEncoder.for_model(model), MAX_SOURCE_LEN, MAX_TARGET_LEN)[0]
    return [Shot(r.source, [r.target], 0) for r in rows]


def adapt_heldout(cfg: SynthConfig, model: CTRModel, suite: Suite, seed: int,
                  table: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    L, K = cfg.code_length, cfg.codebook_size
    starts = sorted({tuple(c) for c in table.values()})
    owners = {s: [n for n, c in table.items() if tuple(c) == s] for s in starts}
    values = ([sorted({c[p] for c in starts}) for p in range(L)] if cfg.values == "seen"
              else [list(range(K))] * L)
    scorer = RankScorer(model, batch_size=512, progress=False)
    out = {}
    for combo in tqdm(suite.heldout, desc="held-out combinations", leave=False):
        name = st.task_name(combo)
        shots = make_shots(model, suite.shots[name])
        evaluation = suite.evaluation[name]
        objective = ShotObjective(scorer, shots, "loss")
        res, report = run_search(objective, [list(s) for s in starts], values, None, cfg.max_sweeps, seed)
        guide = GradientGuide(model, shots, cfg.guide_top, batch_size=64)
        guided, guided_report = run_search(objective, [list(s) for s in starts], values, guide,
                                           cfg.max_sweeps, seed)
        recall = ranking_recall(GradientGuide(model, shots, cfg.guide_top, batch_size=64),
                                res.trajectory, values)
        rng = random.Random(f"{seed}/random/{name}")
        draws = [[rng.choice(values[p]) for p in range(L)] for _ in range(cfg.random_draws)]
        hits = exact_match(model, evaluation * len(draws),
                           [d for d in draws for _ in evaluation])
        n = len(evaluation)
        random_acc = [sum(hits[i * n:(i + 1) * n]) / n for i in range(len(draws))]
        prompt = tune_prompt(model, shots, L, cfg.prompt_steps, cfg.prompt_lr, res.start_code, seed)
        acc = lambda h: sum(h) / len(h)
        out[name] = {
            "factors": dict(zip(st.FACTOR_NAMES, combo)), "description": st.describe(combo),
            "accuracy": {
                "best_training_code": acc(exact_match(model, evaluation, res.start_code)),
                "bitwise_search": acc(exact_match(model, evaluation, res.code)),
                "guided_search": acc(exact_match(model, evaluation, guided.code)),
                "random_code": statistics.mean(random_acc),
                "prompt_tuning": acc(exact_match(model, evaluation, prompt=prompt)),
            },
            "random_code_draws": random_acc,
            "start_code": res.start_code, "start_tasks": owners[tuple(res.start_code)],
            "start_objective": res.start_objective, "search_code": res.code,
            "search_objective": res.objective, "sweeps": res.sweeps,
            "codes_scored": res.evaluations, "search_seconds": round(report["seconds"], 2),
            "search_code_is_training_code": tuple(res.code) in owners,
            "guided": {**guided_report, "code": guided.code, "recall": recall["recall"],
                       "mean_rank_of_best": recall["mean_rank_of_best"]},
        }
    return out


def factor_alignment(table: dict[str, list[int]], permutations: int, seed: int) -> dict[str, Any]:
    """Per factor and position: purity, MI, NMI and chance MI of code value vs primitive."""
    names = list(table)
    codes = np.array([table[n] for n in names], dtype=np.int64)
    out: dict[str, Any] = {}
    for f in st.FACTOR_NAMES:
        labels = [st.parse_task_name(n)[f] for n in names]
        per_pos = position_association(codes, labels, permutations, seed)
        specific = concentrated_values(codes, labels, min_count=2)
        out[f] = {"positions": per_pos,
                  "best_position": max(per_pos, key=lambda r: (r["nmi"], -r["position"])),
                  "specific_values": [a.to_dict() for a in specific[:5]]}
    return out


def run_seed(cfg: SynthConfig, suite: Suite, seed: int, run: Path) -> dict[str, Any]:
    times: dict[str, float] = {}
    t0 = time.time()
    model, final = train_model(cfg, suite, seed, run)
    times["train_s"] = time.time() - t0
    table = model.code_table()
    t1 = time.time()
    train_names = [st.task_name(c) for c in suite.train]
    rows = [e for n in train_names for e in suite.evaluation[n]]
    hits = exact_match(model, rows, [table[n] for n in train_names for _ in suite.evaluation[n]])
    own, k = {}, 0
    for n in train_names:
        m = len(suite.evaluation[n])
        own[n] = sum(hits[k:k + m]) / m
        k += m
    times["eval_train_s"] = time.time() - t1
    t2 = time.time()
    heldout = adapt_heldout(cfg, model, suite, seed, table)
    times["heldout_s"] = time.time() - t2
    alignment = factor_alignment(table, cfg.permutations, seed)
    return {"seed": seed, "checkpoint": str(final), "code_table": table,
            "distinct_codes": len({tuple(c) for c in table.values()}),
            "train_accuracy": own, "heldout": heldout, "alignment": alignment,
            "times": {k: round(v, 1) for k, v in times.items()}}


# ---- the experiment -------------------------------------------------------------------
def run_synth(cfg: SynthConfig) -> dict[str, Any]:
    start = time.time()
    out, run_root = cfg.path(cfg.output_dir), cfg.path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        suite = build_suite(cfg)
        st.check_split(suite.train, suite.heldout)
        run_root.mkdir(parents=True, exist_ok=True)
        write_json(run_root / "factors.json", suite.factors())  # for ctr analyze --factors-file
        runs = []
        for s in cfg.seeds:
            runs.append(run_seed(cfg, suite, s, run_root / f"seed{s}"))
            copy_metrics(run_root / f"seed{s}", out, s)
    finally:
        torch.set_num_threads(threads)
    res = {"config": dataclasses.asdict(cfg), "suite": suite_summary(suite),
           "summary": summarize(runs, suite), "runs": runs, "hardware": {**hardware(), "threads": cfg.threads},  # the threads it ran with
           "provenance": provenance(),
           "wall_seconds": round(time.time() - start, 1)}
    plot_alignment(out / "code_factors.png", runs[0]["code_table"], runs[0]["alignment"])
    write_json(out / "results.json", res)
    (out / "results.md").write_text(markdown(res))
    print(markdown(res))
    print(f"[synth] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'code_factors.png'} "
          f"and the training metrics; checkpoints under {run_root}")
    return res


def suite_summary(suite: Suite) -> dict[str, Any]:
    describe = lambda combos: {st.task_name(c): st.describe(c) for c in combos}
    return {"train": describe(suite.train), "heldout": describe(suite.heldout),
            "primitives": {f: sorted({c[i] for c in suite.train + suite.heldout})
                           for i, f in enumerate(st.FACTOR_NAMES)},
            "examples": {n: [dataclasses.asdict(e) for e in ex[:3]]
                         for n, ex in list(suite.evaluation.items())[:3]}}


def summarize(runs: list[dict[str, Any]], suite: Suite) -> dict[str, Any]:
    """Mean over seeds per held-out combination and method, and the overall means."""
    names = [st.task_name(c) for c in suite.heldout]
    per_task = {n: {m: statistics.mean(r["heldout"][n]["accuracy"][m] for r in runs)
                    for m in METHODS[1:]} for n in names}
    overall = {m: statistics.mean(per_task[n][m] for n in names) for m in METHODS[1:]}
    overall["own_code"] = statistics.mean(statistics.mean(r["train_accuracy"].values()) for r in runs)
    searches = {"bitwise_search": lambda h: {"evaluations": h["codes_scored"],
                                             "seconds": h["search_seconds"],
                                             "objective": h["search_objective"]},
                "guided_search": lambda h: {k: h["guided"][k] for k in
                                            ("evaluations", "seconds", "objective", "recall")}}
    mean = lambda xs: statistics.mean(xs) if xs else None
    cost = {m: {k: mean([x for r in runs for n in names if (x := f(r["heldout"][n])[k]) is not None])
                for k in f(runs[0]["heldout"][names[0]])} for m, f in searches.items()}
    return {"heldout": per_task, "mean": overall, "search_cost": cost,
            "train_min": min(min(r["train_accuracy"].values()) for r in runs),
            "search_beats_random": sum(per_task[n]["bitwise_search"] > per_task[n]["random_code"]
                                       for n in names)}
