#!/usr/bin/env bash
# Real-scale runs on a lent GPU (one H100/H200), in steps that each write under $R and are
# packed into $OUT/results.tgz after every step, so a run cut short keeps what it finished;
# $OUT/summary.txt gets each step's last lines (2 files back in all).
#   bash scripts/gpu_run.sh STEP...     steps: call env packcheck profile throughput evidence
#                                        guided release relnear s1 bench zs11 mt near audit nearfs steer
#   call = env packcheck profile throughput evidence: the training call, under 9 minutes on an
#   H200 (scripts/gpu_setup.sh first; its CPU dry run, tiny values: scripts/gpu_dryrun.sh)
#   codes = env release relnear throughput profile: the codebook call, stage 1 of the default
#   codebook recipe on all T0 sample tasks (RELEASE_MIN=4 repeats the first H200 run's 978 steps
#   at batch 64), its near-suite zero-label beside the backbone, then throughput and profile
# Environment (GPU defaults; DRY=1 sets the dry run's tiny values):
#   R        runs folder (default /tmp/runs: it survives between calls on a warm machine)
#   MODEL    backbone (default smollm2)       STEPS   training steps (400)
#   BS       training batch (64)              EBS     scoring batch (128)
#   MAXEX    near-suite examples per task (1000)   AUDITEX audit disjoint examples (300)
#   TPT      T0 tasks per task type (12)      T0MAX   T0 examples per task ("" = full sets)
#   AUDIT_TASKS  tasks the audit runs, in order (T0 and near names)
#   RELEASE_MIN  minutes of the release's stage 1 (8)   RELEASE  its name (smollm2-t0-s1)
#   TP_ARGS  extra flags of the throughput benchmark   PROF_ARGS  of ctr.bench.profile
#   EV_STEPS training steps of each evidence run (150)  EV_TEMPLATES  near-suite templates (3)
# Every step has a time limit; a failed step is logged and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
R=${R:-/tmp/runs}
if [ -n "${DRY:-}" ]; then  # the CPU dry run: a tiny model, a few examples, steps and rows
  MODEL=${MODEL:-$R/tiny}; STEPS=${STEPS:-3}; BS=${BS:-8}; EBS=${EBS:-8}; MAXEX=${MAXEX:-12}
  TPT=${TPT:-1}; SRC=${SRC:-64}; TGT=${TGT:-8}; NIN=${NIN:-4}; EV_STEPS=${EV_STEPS:-3}
  EV_TEMPLATES=${EV_TEMPLATES:-1}; T0LIM=${T0LIM:---limit-examples 8}
  TP_ARGS=${TP_ARGS:---limit-examples 5 --batch 8 --micro 8 --steps 1 --tiny-steps 1 --max-source-len 64 --pack-multiple 8}
  PROF_ARGS=${PROF_ARGS:---limit-examples 5 --batch 8 --micro 8 --steps 1 --max-source-len 64}
fi
OUT=${OUT:-$R/out}; MODEL=${MODEL:-smollm2}
STEPS=${STEPS:-400}; BS=${BS:-64}; EBS=${EBS:-128}; MAXEX=${MAXEX:-1000}; AUDITEX=${AUDITEX:-300}
TPT=${TPT:-12}; T0MAX=${T0MAX:-}; PRESET=${PRESET:-cpu-small}
SRC=${SRC:-256}; TGT=${TGT:-32}; SHOTS=${SHOTS:-32}; NIN=${NIN:-32}
EV_STEPS=${EV_STEPS:-150}; EV_TEMPLATES=${EV_TEMPLATES:-3}; T0LIM=${T0LIM:-}
# 50 examples per T0 file: the data is read and tokenised in seconds (batches of 64 all the same)
TP_ARGS=${TP_ARGS:---limit-examples 50 --steps 8 --tiny-steps 8}; PROF_ARGS=${PROF_ARGS:---limit-examples 50}
CTR="python3 -m ctr.cli"
mkdir -p "$R" "$OUT"
AUDIT_TASKS=${AUDIT_TASKS:-"super_glue_rte super_glue_cb super_glue_copa glue_sst2 ag_news trec \
  super_glue_wic super_glue_wsc.fixed anli_r3 winogrande_winogrande_xl story_cloze_2016 hellaswag"}
T0_TASKS=${T0_TASKS:-"super_glue_cb super_glue_copa super_glue_rte super_glue_wsc.fixed super_glue_wic anli_r1 anli_r2 anli_r3 winogrande_winogrande_xl story_cloze_2016 hellaswag"}
TRAIN="--tasks-per-type $TPT --drop-single-answer --max-source-len $SRC --max-target-len $TGT \
  --steps $STEPS --batch-size $BS --micro-batch-size $BS --preset $PRESET --model $MODEL --log-every 10"

pack() { tar czf "$OUT/results.tgz" -C "$R" --exclude='*.safetensors' --exclude='checkpoint-*' \
  --exclude='backbone' --exclude='tiny' --exclude='out' --exclude='published' . 2>/dev/null; }
step() {  # step NAME LIMIT_S FUNCTION
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== [$name] start $(date +%T) (limit ${limit}s)"
  timeout "$limit" bash -c "set -x; $1" > "$R/log_$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$R/log_$name.txt"
  echo "=== [$name] rc=$rc in $(( $(date +%s) - t0 ))s"
  { echo "=== [$name] rc=$rc in $(( $(date +%s) - t0 ))s"; grep -v '^+' "$R/log_$name.txt" | \
    grep -E '^(tokens_per_s=|\[check_packing\]|\[gpu_check_env\]|host busy|## stage|Traceback|[A-Za-z]*Error)' | tail -n 12; } >> "$OUT/summary.txt"
  pack
}

env_check() {  # the carried wheels complete (every module imports); the backbone converted once
  python3 scripts/gpu_check_env.py
  if [ -n "${DRY:-}" ]; then
    python3 -c "from ctr.core.testing import save_tiny_backbone; save_tiny_backbone('$MODEL', hidden=64)"
  elif [ "$MODEL" = smollm2 ]; then
    python3 -c "from ctr.core.backbone import smollm2_path; print(smollm2_path())"
  fi
  python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
}
packcheck() {  # packed passes against padded ones on this device (fp32 and bf16)
  python3 -m ctr.bench.packing_check
}
profile() {  # where a few stage-2 and stage-1 steps spend their time, host vs device
  python3 -m ctr.bench.profile --model $MODEL $PROF_ARGS --out $R/profile_train.txt
}
evidence() {  # stage 1, stage 2 and the multi-task baseline, each EV_STEPS x BS on the mixture;
  # the near suite scored by the backbone, the baseline and CTR zero-label (stage 2's model)
  local T="--tasks-per-type $TPT --drop-single-answer --max-source-len $SRC --max-target-len $TGT \
    --steps $EV_STEPS --batch-size $BS --micro-batch-size $BS --preset $PRESET --model $MODEL \
    --log-every 10 --save-every 100000 $T0LIM"
  $CTR train --stage 1 $T --output-dir $R/ev/s1
  $CTR train --stage 2 --init-from $R/ev/s1 $T --output-dir $R/ev/s2
  $CTR train --stage 2 --no-codes $T --output-dir $R/ev/mt
  local N="--suite near --max-examples $MAXEX --batch-size $EBS --max-templates $EV_TEMPLATES"
  $CTR eval --model $MODEL $N --output-dir $R/ev/near_backbone
  $CTR eval --model $R/ev/mt $N --zero-shot-results $R/ev/near_backbone/results.json \
    --output-dir $R/ev/near_multitask
  $CTR zero-label --checkpoint $R/ev/s2 $N --n-inputs $NIN --output-dir $R/ev/near_zero_label
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
throughput() {  # trainer tokens/s, MFU, padding and host overhead, stage 2 then stage 1
  python3 -m ctr.bench.train --throughput --model $MODEL $TP_ARGS --stage 2 --out $R/throughput_stage2.json
  python3 -m ctr.bench.train --throughput --model $MODEL $TP_ARGS --stage 1 --out $R/throughput_stage1.json
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
  python3 -m ctr.interop.release $R/release_run ${RELEASE:-smollm2-t0-s1} --dest $R/published --force
  tar czf $OUT/release.tgz -C $R/published .  # one file back, its CTR weights included
}
relnear() {  # the near suite: the release's CTR zero-label next to the bare backbone
  local N="--suite near --max-examples $MAXEX --batch-size $EBS"
  $CTR zero-label --checkpoint $R/release_run $N --n-inputs $NIN --max-templates 3 \
    --output-dir $R/release_near/zero_label
  $CTR eval --model $MODEL $N --output-dir $R/release_near/zero_shot  # not "backbone": pack() leaves out model folders of that name
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
export EV_STEPS EV_TEMPLATES T0LIM TP_ARGS PROF_ARGS DRY
export -f throughput guided release relnear s1 bench zs11 mt near audit nearfs steer env_check packcheck profile evidence
steps=()
for s in "$@"; do
  case $s in
    call) steps+=(env packcheck profile throughput evidence) ;;
    codes) steps+=(env release relnear throughput profile) ;;
    *) steps+=("$s") ;;
  esac
done
for s in "${steps[@]}"; do
  case $s in
    env) step env ${LIM_ENV:-60} env_check ;;
    packcheck) step packcheck ${LIM_PACKCHECK:-45} packcheck ;;
    profile) step profile ${LIM_PROFILE:-75} profile ;;
    evidence) step evidence ${LIM_EVIDENCE:-240} evidence ;;
    throughput) step throughput ${LIM_THROUGHPUT:-150} throughput ;;
    guided) step guided ${LIM_GUIDED:-240} guided ;;
    release) step release ${LIM_RELEASE:-720} release ;;
    relnear) step relnear ${LIM_RELNEAR:-150} relnear ;;
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
