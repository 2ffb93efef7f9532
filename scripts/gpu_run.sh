#!/usr/bin/env bash
# Real-scale runs on a lent GPU (one H100/H200), in steps that each write under $R and are
# packed into $OUT/results.tgz after every step, so a run cut short keeps what it finished.
#   bash scripts/gpu_run.sh STEP...     steps: throughput guided release s1 bench zs11 mt near audit nearfs steer
# Environment (GPU defaults; the CPU dry run sets tiny values):
#   R        runs folder (default /tmp/runs: it survives between calls on a warm machine)
#   MODEL    backbone (default smollm2)       STEPS   training steps (400)
#   BS       training batch (64)              EBS     scoring batch (128)
#   MAXEX    near-suite examples per task (1000)   AUDITEX audit disjoint examples (300)
#   TPT      T0 tasks per task type (12)      T0MAX   T0 examples per task ("" = full sets)
#   AUDIT_TASKS  tasks the audit runs, in order (T0 and near names)
#   RELEASE_MIN  minutes of the release's stage 1 (8)   RELEASE  its name (smollm2-t0-s1)
#   TP_ARGS  extra flags of the throughput benchmark (the CPU dry run: --limit-examples 20)
# Every step has a time limit; a failed step is logged and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
R=${R:-/tmp/runs}; OUT=${OUT:-$R/out}; MODEL=${MODEL:-smollm2}
STEPS=${STEPS:-400}; BS=${BS:-64}; EBS=${EBS:-128}; MAXEX=${MAXEX:-1000}; AUDITEX=${AUDITEX:-300}
TPT=${TPT:-12}; T0MAX=${T0MAX:-}; PRESET=${PRESET:-cpu-small}
SRC=${SRC:-256}; TGT=${TGT:-32}; SHOTS=${SHOTS:-32}; NIN=${NIN:-32}
CTR="python3 -m ctr.cli"
mkdir -p "$R" "$OUT"
AUDIT_TASKS=${AUDIT_TASKS:-"super_glue_rte super_glue_cb super_glue_copa glue_sst2 ag_news trec \
  super_glue_wic super_glue_wsc.fixed anli_r3 winogrande_winogrande_xl story_cloze_2016 hellaswag"}
T0_TASKS=${T0_TASKS:-"super_glue_cb super_glue_copa super_glue_rte super_glue_wsc.fixed super_glue_wic anli_r1 anli_r2 anli_r3 winogrande_winogrande_xl story_cloze_2016 hellaswag"}
TRAIN="--tasks-per-type $TPT --drop-single-answer --max-source-len $SRC --max-target-len $TGT \
  --steps $STEPS --batch-size $BS --micro-batch-size $BS --preset $PRESET --model $MODEL --log-every 10"

pack() { tar czf "$OUT/results.tgz" -C "$R" --exclude='*.safetensors' --exclude='checkpoint-*' \
  --exclude='backbone' . 2>/dev/null; }
step() {  # step NAME LIMIT_S FUNCTION
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== [$name] start $(date +%T) (limit ${limit}s)"
  timeout "$limit" bash -c "set -x; $1" > "$R/log_$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$R/log_$name.txt"
  echo "=== [$name] rc=$rc in $(( $(date +%s) - t0 ))s"
  pack
}

s1() {  # stage-1 codebook, LM frozen
  $CTR train --stage 1 --save-every 100000 --output-dir $R/s1 $TRAIN
  cp $R/s1/final/ctr_weights.safetensors $OUT/s1_ctr_weights.safetensors  # for analysis elsewhere
}
bench() {  # batched Bitwise Search vs one code at a time, fp32 and bf16
  python3 -m ctr.bench.search --checkpoint $R/s1 --shots $SHOTS --values 32 --batch-size 512 \
    --out $R/bench_search_fp32.json
  python3 -m ctr.bench.search --checkpoint $R/s1 --shots $SHOTS --values 32 --batch-size 512 \
    --dtype bf16 --out $R/bench_search_bf16.json
}
throughput() {  # trainer tokens/s, MFU and the length-grouping speed-up, stage 2 then stage 1
  python3 -m ctr.bench.train --throughput --model $MODEL ${TP_ARGS:-} --stage 2 --out $R/throughput_stage2.json
  python3 -m ctr.bench.train --throughput --model $MODEL ${TP_ARGS:-} --stage 1 --out $R/throughput_stage1.json
}
guided() {  # exhaustive vs gradient-guided Bitwise Search, and the authors' loop, on one model
  local CK=$R/s1; [ -d $CK/final ] || CK=$R/release_run
  python3 -m ctr.bench.search --guided --checkpoint $CK --shots 8 --max-sweeps 2 --batch-size 512 --guide-top 8,16,32 \
    --out $R/bench_guided.json
  python3 -m ctr.bench.search --checkpoint $CK --shots 8 --values 32 --batch-size 512 \
    --out $R/bench_search_release.json
}
release() {  # the longest stage 1 that fits: all T0 sample tasks but single-answer ones,
  # time-budgeted (--max-minutes ends with a clean save); then its CTR weights as a release
  $CTR train --stage 1 --drop-single-answer --max-source-len $SRC --max-target-len $TGT --steps 100000 \
    --batch-size $BS --micro-batch-size $BS --preset $PRESET --model $MODEL --log-every 10 \
    --save-every 200 --max-minutes ${RELEASE_MIN:-8} --output-dir $R/release_run
  python3 -m ctr.interop.release $R/release_run ${RELEASE:-smollm2-t0-s1} --dest $OUT/checkpoints --force
}
zs11() {  # the bare backbone on the 11 held-out T0 tasks, one folder per task
  for t in $T0_TASKS; do
    $CTR eval --model $MODEL --tasks $t ${T0MAX:+--max-examples $T0MAX} --batch-size $EBS \
      --output-dir $R/t0_zeroshot/$t || echo "[zs11] $t failed"
  done
}
mt() {  # multi-task prompted baseline: same tasks, steps and batch, no codes, LM trained
  $CTR train --stage 2 --no-codes --save-every 100000 --output-dir $R/mt $TRAIN
}
near() {  # near-transfer suite: backbone, multi-task baseline, CTR zero-label / few-shot / PT
  local N="--suite near --max-examples $MAXEX --batch-size $EBS"
  $CTR eval --model $MODEL $N --output-dir $R/near/zero_shot
  [ -d $R/mt/final ] && $CTR eval --model $R/mt $N --zero-shot-results $R/near/zero_shot/results.json \
    --output-dir $R/near/multitask
  $CTR zero-label --checkpoint $R/s1 $N --n-inputs $NIN --max-templates 3 --output-dir $R/near/zero_label
  nearfs
}
audit() {  # selection-protocol audit, one folder per task (a cut run keeps finished tasks)
  local A="--checkpoint $R/s1 --n-inputs $NIN --shots $(( SHOTS / 2 )) --max-templates 2 \
    --eval-max-templates 3 --max-examples $AUDITEX --batch-size $EBS"
  for t in $AUDIT_TASKS; do
    local suite=t0; case $t in glue_sst2|trec|ag_news) suite=near ;; esac
    [ -f $R/audit/$t/audit.json ] || $CTR audit $A --suite $suite --tasks $t --output-dir $R/audit/$t \
      || echo "[audit] $t failed"
  done
}
nearfs() {  # near suite: CTR few-shot, discrete-only and prompt tuning on the s1 codebook
  $CTR few-shot --checkpoint $R/s1 --suite near --max-examples $MAXEX --batch-size $EBS --shots $SHOTS \
    --max-templates 1 --max-sweeps 2 --values all --prompt-tuning --prompt-steps 100 \
    --output-dir $R/near/few_shot
}
steer() {  # code analysis and the controllability experiment on the GPU codebook
  $CTR analyze $R/s1 --steer --output-dir $R/analysis_s1
}

export AUDIT_TASKS SHOTS NIN R OUT MODEL STEPS BS EBS MAXEX AUDITEX TPT T0MAX PRESET SRC TGT CTR T0_TASKS TRAIN
export -f throughput guided release s1 bench zs11 mt near audit nearfs steer
for s in "$@"; do
  case $s in
    throughput) step throughput ${LIM_THROUGHPUT:-240} throughput ;;
    guided) step guided ${LIM_GUIDED:-240} guided ;;
    release) step release ${LIM_RELEASE:-720} release ;;
    s1) step s1 ${LIM_S1:-110} s1 ;;
    bench) step bench ${LIM_BENCH:-70} bench ;;
    zs11) step zs11 ${LIM_ZS11:-150} zs11 ;;
    mt) step mt ${LIM_MT:-80} mt ;;
    near) step near ${LIM_NEAR:-90} near ;;
    audit) step audit ${LIM_AUDIT:-110} audit ;;
    nearfs) step nearfs ${LIM_NEARFS:-90} nearfs ;;
    steer) step steer ${LIM_STEER:-40} steer ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
