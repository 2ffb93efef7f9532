"""Exhaustive vs gradient-guided Bitwise Search on `ctr synth`'s trained checkpoints, for
several --guide-top values, without retraining (results/synth/cpu/guide_sweep_ARCH.{json,md}).

    python scripts/synth_guide_sweep.py --arch llama [--tops 1 2 3 5 8 11 15]

Reads results/synth/cpu/ARCH/results.json (config and checkpoints of a finished `ctr synth`
run) and, per training seed and held-out combination, runs the exhaustive search and the
guided search at each top with the run's settings (values, sweeps, seed, shots), then
scores each code's exact match on the same evaluation inputs. Recall is measured along the
exhaustive trajectory (`ctr.adapt.guided_search.ranking_recall`).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from ctr.adapt.bitwise_search import ShotObjective
from ctr.adapt.guided_search import GradientGuide, ranking_recall, run_search
from ctr.core.model import CTRModel
from ctr.experiments import synth_tasks as st
from ctr.experiments.synth import SynthConfig, build_suite, exact_match, make_shots
from ctr.inference.scoring import RankScorer
from ctr.provenance import provenance


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="synth_guide_sweep.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--results", default="results/synth/cpu/{arch}/results.json")
    ap.add_argument("--tops", type=int, nargs="+", default=[1, 2, 3, 5, 8, 11, 15])
    ap.add_argument("--out", default="results/synth/cpu/guide_sweep_{arch}")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = json.loads(Path(args.results.format(arch=args.arch)).read_text())
    known = {k: v for k, v in res["config"].items() if k in SynthConfig.__dataclass_fields__}
    cfg = SynthConfig(**{**known, "guide_top": 1})
    suite = build_suite(cfg)
    rows = []
    for run in res["runs"]:
        seed = run["seed"]
        model = CTRModel.from_pretrained(run["checkpoint"]).eval()
        table = model.code_table()
        assert table == run["code_table"], "checkpoint and results.json disagree"
        starts = [list(s) for s in sorted({tuple(c) for c in table.values()})]
        L, K = cfg.code_length, cfg.codebook_size
        values = ([sorted({c[p] for c in starts}) for p in range(L)] if cfg.values == "seen"
                  else [list(range(K))] * L)
        scorer = RankScorer(model, batch_size=512, progress=False)
        for combo in suite.heldout:
            name = st.task_name(combo)
            shots = make_shots(model, suite.shots[name])
            evaluation = suite.evaluation[name]
            objective = ShotObjective(scorer, shots, "loss")
            acc = lambda code: sum(exact_match(model, evaluation, code)) / len(evaluation)
            ex, ex_rep = run_search(objective, starts, values, None, cfg.max_sweeps, seed)
            recall = ranking_recall(GradientGuide(model, shots, 1, batch_size=64), ex.trajectory, values,
                                    tops=[t for t in args.tops if t <= K - 1])
            row = {"seed": seed, "task": name, "exhaustive": {**ex_rep, "accuracy": acc(ex.code), "code": ex.code},
                   "recall_at": recall["recall_at"], "mean_rank_of_best": recall["mean_rank_of_best"],
                   "guided": {}}
            for top in args.tops:
                g, g_rep = run_search(objective, starts, values, GradientGuide(model, shots, top, batch_size=64),
                                      cfg.max_sweeps, seed)
                row["guided"][str(top)] = {**g_rep, "accuracy": acc(g.code), "code": g.code}
            rows.append(row)
            print(name, seed, row["exhaustive"]["accuracy"],
                  {t: v["accuracy"] for t, v in row["guided"].items()}, flush=True)
    mean = lambda xs: statistics.mean(xs)
    summary = {"exhaustive": {k: mean([r["exhaustive"][k] for r in rows])
                              for k in ("accuracy", "evaluations", "seconds", "cpu_seconds", "objective")},
               "guided": {t: {**{k: mean([r["guided"][t][k] for r in rows])
                                 for k in ("accuracy", "evaluations", "seconds", "cpu_seconds", "objective",
                                           "gradient_passes")},
                              "recall": mean([r["recall_at"][t] for r in rows if r["recall_at"].get(t) is not None])}
                          for t in map(str, args.tops)}}
    out = Path(args.out.format(arch=args.arch))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"arch": args.arch, "config": res["config"], "summary": summary,
                                                    "rows": rows, "provenance": provenance()}, indent=1) + "\n")
    ex = summary["exhaustive"]
    lines = [f"# Exhaustive vs gradient-guided search, synth {args.arch} "
             f"({len(res['runs'])} seeds x {len(suite.heldout)} held-out combinations, values {cfg.values})", "",
             "| search | exact match | codes scored | seconds | CPU s | final shot loss | recall |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| exhaustive | {ex['accuracy']:.3f} | {ex['evaluations']:.1f} | {ex['seconds']:.2f} | "
             f"{ex['cpu_seconds']:.2f} | {ex['objective']:.2f} | - |"]
    for t, g in summary["guided"].items():
        lines.append(f"| guided, top {t} | {g['accuracy']:.3f} | {g['evaluations']:.1f} | {g['seconds']:.2f} | "
                     f"{g['cpu_seconds']:.2f} | {g['objective']:.2f} | {g['recall']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
