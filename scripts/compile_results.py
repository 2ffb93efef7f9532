"""Collect the SmolLM2 runs of scripts/results_smollm2.sh into results/ (Markdown + JSON)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ctr.evaluate import PAPER_REFERENCE

runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs")
out = Path("results")
load = lambda p: json.loads(Path(p).read_text())


def median(res, task):
    return res["tasks"][task]["median"]


def adaptation_table() -> None:
    zs, zl, fs = load(runs / "zs3_smollm2/results.json"), load(runs / "zl_smollm2/results.json"), \
        load(runs / "fs_smollm2/results.json")
    train_cfg = load(runs / "s1_smollm2/train_config.json")
    metrics = [json.loads(x) for x in (runs / "s1_smollm2/metrics.jsonl").read_text().splitlines()]
    tasks = list(zs["tasks"])
    lines = [
        "# Held-out adaptation on SmolLM2-135M-Instruct after a small stage-1 run (issue 4)", "",
        f"Stage 1: {len(load(runs / 's1_smollm2/code_table.json'))} T0 training tasks "
        f"(`--tasks-per-type 3 --drop-single-answer`), {train_cfg['steps']} steps x {train_cfg['batch_size']} "
        f"examples, lr {train_cfg['lr']} (projections x{train_cfg['projection_lr_scale']}), source "
        f"{train_cfg['max_source_len']} / target {train_cfg['max_target_len']} tokens, plain VQ, L=10, K=128, "
        f"seed {train_cfg['seed']}. LM loss {metrics[0]['lm_loss']:.2f} -> {metrics[-1]['lm_loss']:.2f} "
        f"(single batches), VQ loss {metrics[0]['vq_loss']:.2f} -> {metrics[-1]['vq_loss']:.2f}, "
        f"{metrics[-1]['distinct_values']} distinct values in use.", "",
        f"Evaluation: {zs['config']['max_examples']} validation examples per task (seeded subsample, seed "
        f"{zs['config']['seed']}, the same for every column), all usable original-task templates, median "
        "accuracy (%) over templates, rank classification by summed log-likelihood.", "",
        "- zero-label: Code Ensemble over the 24 training codes, 32 unlabelled *train* inputs x 3 templates, "
        "majority vote; no label read.",
        f"- few-shot: {fs['config']['shots']} label-balanced train shots x 1 template; Bitwise Search over the values "
        "seen at each position in training codes, 1 sweep, objective = summed target loss; discrete only = its "
        f"start (best training code on the shots); prompt tuning = a 10 x 576 prompt trained {fs['config']['prompt_steps']} "
        f"steps (lr {fs['config']['prompt_lr']}) on the same shots from the start code's soft prompt.", "",
        "| task | backbone zero-shot | CTR zero-label | CTR few-shot (Bitwise) | discrete only | prompt tuning | "
        "paper zero-label | paper few-shot |", "|---|---|---|---|---|---|---|---|"]
    runs_fs = fs["runs"]
    for t in tasks:
        ref = PAPER_REFERENCE[t]
        lines.append(f"| {t} | {median(zs, t):.1f} | {median(zl, t):.1f} | {median(runs_fs['bitwise'], t):.1f} | "
                     f"{median(runs_fs['discrete'], t):.1f} | {median(runs_fs['prompt_tuning'], t):.1f} | "
                     f"{ref[0]:.1f} | {ref[1]:.1f} |")
    avg = lambda res: sum(median(res, t) for t in tasks) / len(tasks)
    lines.append(f"| **average** | {avg(zs):.1f} | {avg(zl):.1f} | {avg(runs_fs['bitwise']):.1f} | "
                 f"{avg(runs_fs['discrete']):.1f} | {avg(runs_fs['prompt_tuning']):.1f} | "
                 f"{sum(PAPER_REFERENCE[t][0] for t in tasks) / len(tasks):.1f} | "
                 f"{sum(PAPER_REFERENCE[t][1] for t in tasks) / len(tasks):.1f} |")
    lines += ["", "Chosen codes:", ""]
    for t in tasks:
        s = zl["zero_label"][t]
        a = fs["adapted"][t]
        lines.append(f"- {t}: zero-label `{','.join(map(str, s['code']))}` (training task {s['from_tasks'][0]}, "
                     f"agreement {s['agreement']:.2f}); few-shot start `{','.join(map(str, a['start_code']))}` "
                     f"({a['start_tasks'][0]}, loss {a['start_objective']:.2f}) -> "
                     f"`{','.join(map(str, a['search_code']))}` (loss {a['search_objective']:.2f}, "
                     f"{a['codes_scored']} codes scored in {a['seconds']} s)")
    lines += ["", "Hardware: the project's CPU machine (2 cores, no GPU), torch 2.13.0+cpu, 2026-11-26. "
              "Commands: `bash scripts/results_smollm2.sh` (steps 1-4), then "
              "`python scripts/compile_results.py`. Seeds: 0 everywhere."]
    (out / "adaptation_smollm2.md").write_text("\n".join(lines) + "\n")
    for name, src in [("zero_shot3", zs), ("zero_label", zl), ("few_shot", fs)]:
        (out / "adaptation_smollm2").mkdir(exist_ok=True)
        (out / "adaptation_smollm2" / f"{name}.json").write_text(json.dumps(src, indent=1) + "\n")
    shutil.copy(runs / "s1_smollm2/code_table.json", out / "adaptation_smollm2" / "stage1_code_table.json")
    shutil.copy(runs / "s1_smollm2/metrics.jsonl", out / "adaptation_smollm2" / "stage1_metrics.jsonl")


def zero_shot_table() -> None:
    p = runs / "t0_zeroshot_smollm2"
    if not (p / "results.json").exists():
        return
    res = load(p / "results.json")
    text = (p / "results.md").read_text()
    head = ("# SmolLM2-135M-Instruct zero-shot on the 11 held-out T0 tasks (issue 3)\n\n"
            "Command: `ctr eval --model smollm2 --max-examples 30 --output-dir runs/t0_zeroshot_smollm2` "
            "(seeded subsample of 30 validation examples per task, all usable original-task templates, "
            "median over templates; CPU, 2 cores). Chance: ANLI 33.3, CB 33.3 (3-way; majority class 41-50%), "
            "HellaSwag 25, the others 50; average chance about 44.\n\n")
    (out / "t0_zeroshot_smollm2.md").write_text(head + text)
    (out / "t0_zeroshot_smollm2.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    adaptation_table()
    zero_shot_table()
    print("wrote results/adaptation_smollm2.md" + (" and results/t0_zeroshot_smollm2.md"
                                                    if (runs / "t0_zeroshot_smollm2/results.json").exists() else ""))
