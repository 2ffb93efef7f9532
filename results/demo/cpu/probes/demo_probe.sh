#!/usr/bin/env bash
# demo probe: usage probe.sh KIND TAG [extra train flags]; KIND mt (baseline) | s2 (needs S1=dir)
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
CTR=/work/main/.venv/bin/ctr
R=/work/probe/runs; KIND=$1; TAG=$2; shift 2
MIX=$(/work/main/.venv/bin/python -c "from ctr.demo import MIXTURE;print(' '.join(MIXTURE))")
F="--model smollm2 --preset cpu-demo --mixing balanced --max-source-len 64 --max-target-len 8 --save-every 1000 --tasks $MIX"
E="--tasks glue_sst2 --max-examples 100 --seed 0"
t=$SECONDS
if [ $KIND = mt ]; then
  $CTR train --stage 2 --no-codes $F "$@" --output-dir $R/$TAG > $R/$TAG.log 2>&1
  echo "train $TAG $((SECONDS-t))s"; t=$SECONDS
  $CTR eval --model $R/$TAG $E --output-dir $R/${TAG}_e > $R/${TAG}_e.log 2>&1
elif [ $KIND = s1 ]; then
  $CTR train --stage 1 $F "$@" --output-dir $R/$TAG > $R/$TAG.log 2>&1
  echo "train $TAG $((SECONDS-t))s"; t=$SECONDS
  $CTR zero-label --checkpoint $R/$TAG $E --n-inputs 16 --max-templates 1 --output-dir $R/${TAG}_e > $R/${TAG}_e.log 2>&1
else
  $CTR train --stage 2 --init-from $S1 $F "$@" --output-dir $R/$TAG > $R/$TAG.log 2>&1
  echo "train $TAG $((SECONDS-t))s"; t=$SECONDS
  $CTR zero-label --checkpoint $R/$TAG $E --n-inputs 16 --max-templates 1 --output-dir $R/${TAG}_e > $R/${TAG}_e.log 2>&1
fi
echo "eval $TAG $((SECONDS-t))s"
grep -h "glue_sst2" $R/${TAG}_e/results.md | head -3
