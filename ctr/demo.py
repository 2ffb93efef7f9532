"""`make demo`: train a stage-1 CTR codebook on the T0 sample with the embedded SmolLM2.

A small CPU budget (a few minutes): 3 tasks per task type (24 tasks over 8 types),
single-answer tasks dropped, 128 source tokens. Prints the data summary, the loss
curve, the learned code table grouped by task type, and codebook usage.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from .config import TrainConfig
from .data import data_dir
from .trainer import summarize_run, train


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output-dir", default="runs/demo")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=None, help="override the cpu-demo preset's steps")
    args = ap.parse_args(argv)
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # a demo always starts fresh
    print(f"[demo] data: {data_dir()}")
    t0 = time.time()
    cfg = TrainConfig(output_dir=str(out), model=args.model, stage=1, preset="cpu-demo",
                      tasks_per_type=3, drop_single_answer=True, max_source_len=128,
                      max_target_len=16, save_every=20, steps=args.steps)
    train(cfg)
    print()
    print(summarize_run(out))
    types = {r["task"]: r["type"] for r in _task_types(cfg)}
    table = json.loads((out / "code_table.json").read_text())
    print("\n## Codes by task type\n")
    for ttype in sorted(set(types.values())):
        for name, code in table.items():
            if types.get(name) == ttype:
                print(f"{ttype:<26} {' '.join(f'{c:3d}' for c in code)}  {name}")
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    print(f"\ncodebook use: {last['distinct_values']} distinct values over {len(table)} tasks; "
          f"per-position perplexity {last['code_perplexity']}")
    print(f"[demo] done in {time.time() - t0:.0f}s; model in {out / 'final'}")


def _task_types(cfg: TrainConfig) -> list[dict[str, str]]:
    from .data import read_manifest
    return [{"task": Path(f).stem, "type": row["task_type"]}
            for f, row in read_manifest(data_dir(cfg.data_dir)).items()]


if __name__ == "__main__":
    main()
