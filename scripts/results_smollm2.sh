#!/usr/bin/env bash
# Reproduces the SmolLM2 tables under results/ (CPU, 2 cores: about 1.5 hours in all).
# Usage: bash scripts/results_smollm2.sh [runs-folder]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}
CTR=".venv/bin/ctr"
TASKS="super_glue_rte super_glue_copa super_glue_cb"
N=50

# 1. stage-1 codebook: 24 T0 tasks (3 per type), single-answer tasks dropped
$CTR train --stage 1 --preset cpu-small --steps 120 --batch-size 8 --micro-batch-size 8 \
  --tasks-per-type 3 --drop-single-answer --max-source-len 128 --max-target-len 16 \
  --save-every 40 --resume --output-dir $R/s1_smollm2
# 2. the bare backbone on the same evaluation subsample
$CTR eval --model smollm2 --tasks $TASKS --max-examples $N --output-dir $R/zs3_smollm2
# 3. zero-label Code Ensemble (32 unlabelled train inputs x 3 templates)
$CTR zero-label --checkpoint $R/s1_smollm2 --tasks $TASKS --n-inputs 32 --max-templates 3 \
  --max-examples $N --output-dir $R/zl_smollm2
# 4. few-shot: Bitwise Search (16 shots, values seen in training codes, 1 sweep, 1 template),
#    discrete-only and prompt tuning on the same shots
$CTR few-shot --checkpoint $R/s1_smollm2 --tasks $TASKS --shots 16 --values seen --max-sweeps 1 \
  --max-templates 1 --prompt-tuning --prompt-steps 40 --max-examples $N --output-dir $R/fs_smollm2
# 5. the bare backbone on all 11 held-out T0 tasks, 100 examples each
$CTR eval --model smollm2 --max-examples 100 --output-dir $R/t0_zeroshot_smollm2
