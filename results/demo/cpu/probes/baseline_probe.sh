#!/usr/bin/env bash
# probe: does a higher stage-2 lr lift SST-2 in 30 steps? usage: mt_lr.sh LR TAG [extra train flags]
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/evid2
CTR=/work/main/.venv/bin/ctr
R=/work/proto/runs; LR=$1; TAG=$2; shift 2
MIX=$(ls /work/proto/runs/s1/final >/dev/null; python3 -c "import json;print(' '.join(json.load(open('/work/proto/runs/s1/train_config.json'))['tasks']))")
F="--model smollm2 --preset cpu-demo --mixing balanced --max-source-len 128 --max-target-len 8 --save-every 1000 --tasks $MIX"
E="--tasks glue_sst2 --max-examples 100 --seed 0"
t=$SECONDS
$CTR train --stage 2 --no-codes $F --steps 30 --lr $LR "$@" --output-dir $R/mt_$TAG > $R/mt_$TAG.log 2>&1; echo "mt_$TAG $((SECONDS-t))"; t=$SECONDS
$CTR eval --model $R/mt_$TAG $E --max-templates 3 --output-dir $R/mte_$TAG > $R/mte_$TAG.log 2>&1; echo "mte_$TAG $((SECONDS-t))"
grep -h "glue_sst2 |" $R/mte_$TAG/results.md
