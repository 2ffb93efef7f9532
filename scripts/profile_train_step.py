"""Where a CTR training step spends its time next to the bare backbone's (issue 14, ctr_step_ratio).

    OMP_NUM_THREADS=1 python scripts/profile_train_step.py [--model smollm2] [--rows 18]

One stage-2 step (forward, backward, AdamW) of each, on the batch `ctr.bench.train` times
(8 rows, sources cut to 256 tokens), profiled with torch.profiler after two warm-up steps;
prints both operator tables (self CPU time) and their totals.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from ctr.bench.train import make_rows, step_fn
from ctr.config import CTRConfig
from ctr.core.adapter import adapter_for
from ctr.core.backbone import load_backbone
from ctr.core.model import CTRModel
from ctr.train.batching import collate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rows", type=int, default=18, help="operator rows per table")
    args = ap.parse_args()
    torch.manual_seed(0)
    backbone, tok = load_backbone(args.model)
    batch = collate(make_rows(tok, 8, 256), tok.pad_token_id, adapter_for(backbone))
    models = {"ctr": CTRModel(backbone, CTRConfig(task_names=["t0", "t1", "t2", "t3"]), tok).train(),
              "bare": CTRModel(backbone, CTRConfig(use_codes=False), tok).train()}
    totals = {}
    for name, model in models.items():
        step = step_fn(model, batch, True)
        step(), step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = prof.key_averages()
        totals[name] = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"===== {name}: {totals[name]:.2f} s self CPU")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(f"profiled_step_ratio={totals['ctr'] / totals['bare']:.3f}")


if __name__ == "__main__":
    main()
