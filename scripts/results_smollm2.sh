#!/usr/bin/env bash
# Reproduces the SmolLM2 tables under results/<experiment>/cpu/ (CPU, 2 cores: about 3 hours in all, alone on the machine).
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
done_ results/bench_search/cpu/bench_search.json || \
.venv/bin/python -m ctr.bench.search --checkpoint $R/s1_smollm2 --shots 8 --values 8 --batch-size 64 \
  --out results/bench_search/cpu/bench_search.json
# 6. the bare backbone on the 5 held-out T0 tasks the GPU run did not reach (~15 min;
#    the other 6 ran on full sets on a lent H200: scripts/gpu_run.sh zs11)
done_ $R/t0_zeroshot_rest_cpu/results.json || \
$CTR eval --model smollm2 --tasks anli_r2 anli_r3 winogrande_winogrande_xl story_cloze_2016 hellaswag \
  --max-examples 20 --max-templates 5 --output-dir $R/t0_zeroshot_rest_cpu
# 7. near-transfer suite: backbone, multi-task baseline (same budget as step 1, no codes),
#    CTR zero-label, few-shot and prompt tuning, on 50 examples x first 2 templates (~40 min)
done_ $R/mt_smollm2/final/ctr_config.json || \
$CTR train --stage 2 --no-codes --preset cpu-small --steps 120 --batch-size 8 --micro-batch-size 8 \
  --tasks-per-type 3 --drop-single-answer --max-source-len 128 --max-target-len 16 --save-every 40 \
  --resume --output-dir $R/mt_smollm2
NEAR="--suite near --max-examples 50"
done_ $R/near_cpu/zero_shot/results.json || \
$CTR eval --model smollm2 $NEAR --max-templates 2 --output-dir $R/near_cpu/zero_shot
done_ $R/near_cpu/multitask/results.json || \
$CTR eval --model $R/mt_smollm2 $NEAR --max-templates 2 --zero-shot-results $R/near_cpu/zero_shot/results.json \
  --output-dir $R/near_cpu/multitask
done_ $R/near_cpu/zero_label/results.json || \
$CTR zero-label --checkpoint $R/s1_smollm2 $NEAR --eval-max-templates 2 --n-inputs 16 --max-templates 2 \
  --output-dir $R/near_cpu/zero_label
done_ $R/near_cpu/few_shot/results.json || \
$CTR few-shot --checkpoint $R/s1_smollm2 $NEAR --eval-max-templates 2 --shots 8 --values seen --max-sweeps 1 \
  --max-templates 1 --prompt-tuning --prompt-steps 40 --output-dir $R/near_cpu/few_shot
# 8. selection-protocol audit: ours vs --protocol authors, T0 and near tasks (~40 min)
done_ $R/audit_cpu_t0/audit.json || \
$CTR audit --checkpoint $R/s1_smollm2 --tasks $TASKS --n-inputs 16 --shots 8 --max-templates 1 \
  --eval-max-templates 2 --max-examples 40 --output-dir $R/audit_cpu_t0
done_ $R/audit_cpu_near/audit.json || \
$CTR audit --checkpoint $R/s1_smollm2 --suite near --n-inputs 16 --shots 8 --max-templates 1 \
  --eval-max-templates 2 --max-examples 40 --output-dir $R/audit_cpu_near
