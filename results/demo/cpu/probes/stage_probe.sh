#!/usr/bin/env bash
# demo v2 prototype: how many stage-2 steps lift SST-2?
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/evid2
CTR=/work/main/.venv/bin/ctr
R=/work/proto/runs; mkdir -p $R
MIX=$(/work/main/.venv/bin/python -m ctr.tasks.named_mixtures near20)  # the 20 near20 tasks
F="--model smollm2 --preset cpu-demo --mixing balanced --max-source-len 128 --max-target-len 8 --save-every 1000 --tasks $MIX"
E="--tasks glue_sst2 --max-examples 100 --seed 0"
t=$SECONDS
$CTR train --stage 1 $F --steps ${S1:-40} --output-dir $R/s1 > $R/s1.log 2>&1; echo "s1 $((SECONDS-t))"; t=$SECONDS
$CTR train --stage 2 --init-from $R/s1 $F --steps ${S2:-30} --output-dir $R/s2 > $R/s2.log 2>&1; echo "s2 $((SECONDS-t))"; t=$SECONDS
$CTR train --stage 2 --no-codes $F --steps ${S2:-30} --output-dir $R/mt > $R/mt.log 2>&1; echo "mt $((SECONDS-t))"; t=$SECONDS
$CTR eval --model smollm2 $E --max-templates 3 --output-dir $R/bb > $R/bb.log 2>&1; echo "bb $((SECONDS-t))"; t=$SECONDS
$CTR eval --model $R/mt $E --max-templates 3 --output-dir $R/mte > $R/mte.log 2>&1; echo "mte $((SECONDS-t))"; t=$SECONDS
for s in s1 s2; do $CTR zero-label --checkpoint $R/$s $E --n-inputs 16 --max-templates 2 --eval-max-templates 3 --output-dir $R/zl_$s > $R/zl_$s.log 2>&1; echo "zl_$s $((SECONDS-t))"; t=$SECONDS; done
grep -h "median\|glue_sst2" $R/*/results.md
