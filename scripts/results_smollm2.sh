#!/usr/bin/env bash
# Reproduces the SmolLM2 tables under results/ (CPU, 2 cores: about 1.5 hours in all, alone on the machine).
# Steps whose output exists are skipped, so an interrupted run can simply be restarted.
# Usage: bash scripts/results_smollm2.sh [runs-folder]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}
CTR=".venv/bin/ctr"
TASKS="super_glue_rte super_glue_copa super_glue_cb"
N=50
done_() { [ -f "$1" ] && echo "[skip] $1 exists"; }

# 1. stage-1 codebook: 24 T0 tasks (3 per type), single-answer tasks dropped (~15 min)
done_ $R/s1_smollm2/final/ctr_config.json || \
$CTR train --stage 1 --preset cpu-small --steps 120 --batch-size 8 --micro-batch-size 8 \
  --tasks-per-type 3 --drop-single-answer --max-source-len 128 --max-target-len 16 \
  --save-every 40 --resume --output-dir $R/s1_smollm2
# 2. the bare backbone on the same evaluation subsample (~6 min)
done_ $R/zs3_smollm2/results.json || \
$CTR eval --model smollm2 --tasks $TASKS --max-examples $N --output-dir $R/zs3_smollm2
# 3. zero-label Code Ensemble: 32 unlabelled train inputs x 3 templates (~20 min)
done_ $R/zl_smollm2/results.json || \
$CTR zero-label --checkpoint $R/s1_smollm2 --tasks $TASKS --n-inputs 32 --max-templates 3 \
  --max-examples $N --output-dir $R/zl_smollm2
# 4. few-shot: Bitwise Search (8 shots, values seen in training codes, 1 sweep, 1 template),
#    discrete-only and prompt tuning on the same shots (~20 min)
done_ $R/fs_smollm2/results.json || \
$CTR few-shot --checkpoint $R/s1_smollm2 --tasks $TASKS --shots 8 --values seen --max-sweeps 1 \
  --max-templates 1 --prompt-tuning --prompt-steps 40 --max-examples $N --output-dir $R/fs_smollm2
# 5. search benchmark: batched vs one code at a time, on the stage-1 model (~6 min)
done_ $R/bench_search.json || \
.venv/bin/python -m ctr.bench.search --checkpoint $R/s1_smollm2 --shots 8 --out $R/bench_search.json
# 6. the bare backbone on all 11 held-out T0 tasks, 30 examples each (~20 min)
done_ $R/t0_zeroshot_smollm2/results.json || \
$CTR eval --model smollm2 --max-examples 30 --output-dir $R/t0_zeroshot_smollm2
