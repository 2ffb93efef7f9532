#!/usr/bin/env bash
# One recipe probe of the demo's releases: train on the demo's 20 tasks (ctr.demo.MIXTURE),
# then score SST-2 on a seeded subsample of the validation set, every original template.
#   bash results/demo/probes/probe.sh KIND TAG [extra ctr train flags]
#   KIND: mt (the multi-task baseline, --no-codes --lora) | s2 (stage 2 --lora from $S1,
#   default the released codebook smollm2-near20-s1, scored by ctr zero-label)
# Environment: N (SST-2 examples, default 200), R (run folder, default runs/probes).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
CTR=.venv/bin/ctr
R=${R:-runs/probes}; N=${N:-200}; S1=${S1:-smollm2-near20-s1}
KIND=$1; TAG=$2; shift 2
mkdir -p "$R"
MIX=$(.venv/bin/python -c "from ctr.demo import MIXTURE; print(' '.join(sorted(MIXTURE)))")  # the releases' order
F="--model smollm2 --preset cpu-small --steps 100 --batch-size 8 --micro-batch-size 8 --mixing balanced
   --max-source-len 128 --max-target-len 8 --save-every 50 --resume --seed 0 --lora --tasks $MIX"
E="--suite near --tasks glue_sst2 --max-examples $N --seed 0"
t=$SECONDS
train() {  # train ARGS...: ctr train, with the run's provenance (command, commit, hardware, date)
  [ -f "$R/$TAG/final/ctr_config.json" ] && return 0
  mkdir -p "$R/$TAG"
  .venv/bin/python -c 'import json, sys; from ctr.provenance import provenance
print(json.dumps(provenance(sys.argv[1:]), indent=1))' $CTR train "$@" --output-dir "$R/$TAG" > "$R/$TAG/provenance.json"
  $CTR train "$@" --output-dir "$R/$TAG" > "$R/$TAG.log" 2>&1
}
case $KIND in
  mt) train --stage 2 --no-codes $F "$@"
      echo "train $TAG $((SECONDS-t))s"; t=$SECONDS
      $CTR eval --model "$R/$TAG" $E --output-dir "$R/${TAG}_e$N" > "$R/${TAG}_e$N.log" 2>&1 ;;
  s2) train --stage 2 --init-from "$S1" $F "$@"
      echo "train $TAG $((SECONDS-t))s"; t=$SECONDS
      $CTR zero-label --checkpoint "$R/$TAG" $E --n-inputs 32 --max-templates 1 \
        --output-dir "$R/${TAG}_e$N" > "$R/${TAG}_e$N.log" 2>&1 ;;
  *) echo "KIND: mt or s2" >&2; exit 2 ;;
esac
echo "eval $TAG $((SECONDS-t))s"
grep -h "glue_sst2" "$R/${TAG}_e$N/results.md" | head -3
