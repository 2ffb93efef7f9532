#!/usr/bin/env bash
# The evidence table, do the codes matter? (results/evidence/): on SmolLM2-135M, CPU, seeds 0
# and 1, held-out tasks the 20-task mixture `near20` (ctr.tasks.named_mixtures) makes reachable,
# every column at the same training budget:
#   backbone | multi-task prompted baseline (--stage 2 --no-codes) | CTR stage-1 zero-label |
#   CTR stage-2 zero-label | CTR few-shot (Bitwise, 32 shots, 25% held out) | discrete only | prompt tuning
# and, for the main mixture, the ceiling of stage 1: free per-task prompts scored by the same zero-label.
# Held-out tasks of the main mixture: glue_sst2 (full validation set, 872) and trec (full test set,
# 500; its 5 coarse-label templates). Leave-one-dataset-out: a second stage-1 / baseline pair trained
# without the ag_news_* tasks and scored on AG News (500 seeded test examples, first 5 templates),
# the only dataset of the mixture that has an evaluation set here (results/evidence/README.md).
#
# Usage: bash scripts/evidence_smollm2.sh [RUNS] [--quick]
#   RUNS     where checkpoints and results go (default runs_evidence; runs_evidence_quick with --quick)
#   --quick  tiny sizes (2 training steps, 4 examples, 4 shots): checks the pipeline end to end in
#            minutes; its table says QUICK and is no evidence. A folder is either quick or full.
# Every step is skipped when its output exists, so a killed run resumes by running it again
# (training also resumes from its last checkpoint). Then: python scripts/compile_evidence.py RUNS
#
# Environment (optional): SEEDS ("0 1"; e.g. SEEDS=0 and SEEDS=1 in two shells run the seeds in
# parallel), MODEL (backbone, default smollm2), CTR (the ctr command), PY (python), FS_FROM (s1:
# few-shot on the stage-1 model, the default; s2: on the stage-2 model), LODO_DROP (prefix of the training tasks the
# leave-one-out pair drops, default ag_news_; empty: no such pair) and LODO_TASK (what it is scored
# on, default ag_news), AG_N (AG News examples, default 500), MAIN_TASKS ("glue_sst2 trec"),
# PAIRS ("main lodo": which training pairs run; e.g. PAIRS=lodo runs only the leave-one-out pair).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
R=""
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n 2,24p "$0"; exit 0 ;;
    -*) echo "unknown option $a (usage: $0 [RUNS] [--quick])" >&2; exit 2 ;;
    *) [ -z "$R" ] || { echo "one RUNS folder only" >&2; exit 2; }; R=$a ;;
  esac
done
MODE=$([ $QUICK = 1 ] && echo quick || echo full)
R=${R:-$([ $QUICK = 1 ] && echo runs_evidence_quick || echo runs_evidence)}
mkdir -p "$R"
if [ -f "$R/MODE" ] && [ "$(cat "$R/MODE")" != "$MODE" ]; then
  echo "$R holds a $(cat "$R/MODE") run; this is a $MODE run: use another folder" >&2; exit 2
fi
echo "$MODE" > "$R/MODE"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
CTR=${CTR:-.venv/bin/ctr}
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-smollm2}
SEEDS=${SEEDS:-"0 1"}
FS_FROM=${FS_FROM:-s1}
LODO_DROP=${LODO_DROP-ag_news_}
LODO_TASK=${LODO_TASK:-ag_news}
MAIN_TASKS=${MAIN_TASKS:-"glue_sst2 trec"}
PAIRS=${PAIRS:-"main lodo"}
for p in $PAIRS; do
  case $p in main|lodo) ;; *) echo "PAIRS: unknown pair '$p' (main, lodo)" >&2; exit 2 ;; esac
done
has_pair() { [[ " $PAIRS " == *" $1 "* ]]; }

# The 20-task mixture near20 (9 amazon_polarity, 7 ag_news, 4 glue_qqp templates).
MIX=$($PY -m ctr.tasks.named_mixtures near20)
LODO_MIX=$(for t in $MIX; do [ -n "$LODO_DROP" ] && [[ $t == "$LODO_DROP"* ]] || echo "$t"; done | xargs)
# TREC: the 5 coarse-label templates (the two fine-grained ones have 47 answer choices and another label)
TREC_TEMPLATES="pick_the_best_descriptor trec1 trec2 what_category_best_describe which_category_best_describes"

if [ $QUICK = 1 ]; then
  STEPS=2; BATCH=2; SAVE=1; LIMIT="--limit-examples 8"
  N_FULL="--max-examples 4"; AG_N=4; EVAL_T=2; TREC_TEMPLATES="trec1 trec2"
  ZL_INPUTS=2; ZL_T=1; SHOTS=4; FS_T=1; SWEEPS=1; PT_STEPS=2; PROBE=1
else
  STEPS=100; BATCH=8; SAVE=50; LIMIT=""
  N_FULL=""; AG_N=${AG_N:-500}; EVAL_T=""
  ZL_INPUTS=32; ZL_T=5; SHOTS=32; FS_T=1; SWEEPS=2; PT_STEPS=50; PROBE=8
fi

# What each task is scored on: SCOPE (task, examples, named templates; shared by eval and the
# adaptations) and EVALMAX (first N templates of the evaluation; empty: all usable).
scope() {
  case $1 in
    glue_sst2) SCOPE="--tasks glue_sst2 $N_FULL"; EVALMAX=$EVAL_T ;;
    trec) SCOPE="--tasks trec --templates $TREC_TEMPLATES $N_FULL"; EVALMAX="" ;;
    ag_news) SCOPE="--tasks ag_news --max-examples $AG_N"; EVALMAX=${EVAL_T:-5} ;;
    *) SCOPE="--tasks $1 $N_FULL"; EVALMAX=$EVAL_T ;;
  esac
}
# seeded subsample: the backbone is scored per seed; on a full set once (the seed does not matter)
subsampled() { scope "$1"; [[ "$SCOPE" == *--max-examples* ]]; }

step() {  # step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists; log its wall time
  local name=$1 out=$2; shift 2
  if [ -f "$out" ]; then echo "[skip] $name: $out exists"; return 0; fi
  echo "[run] $name: $*"
  local t0=$SECONDS
  "$@"
  [ -f "$out" ] || { echo "$name finished without writing $out" >&2; exit 1; }
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - t0))" "$(date -u +%FT%TZ)" >> "$R/timings.tsv"
}

train_flags() {  # train_flags SEED TASKS...: the recipe of results/stage1_cpu_recipe, plus --seed
  local seed=$1; shift
  echo "--model $MODEL --preset cpu-small --steps $STEPS --batch-size $BATCH --micro-batch-size $BATCH
        --mixing balanced --max-source-len 128 --max-target-len 8 --save-every $SAVE --resume
        --seed $seed $LIMIT --tasks $*"
}
free_flags() {  # free_flags SEED TASKS...: the same data, steps and batch for `ctr free-prompts`
  local seed=$1; shift
  echo "--model $MODEL --steps $STEPS --batch-size $BATCH --mixing balanced --max-source-len 128
        --max-target-len 8 --lr 1e-2 --warmup-steps 10 --probe-batches $PROBE --seed $seed $LIMIT
        --tasks $*"
}

# ---- columns of one held-out task for one training pair ----------------------------------------
columns() {  # columns SEED PAIR_DIR TASK HAS_S2
  local s=$1 P=$2 t=$3 has_s2=$4
  scope "$t"
  local D="$P/$t" em=${EVALMAX:+--max-templates $EVALMAX} am=${EVALMAX:+--eval-max-templates $EVALMAX}
  step "seed$s ${P##*/} $t multi-task baseline" "$D/mt/results.json" \
    $CTR eval --model "$P/mt" $SCOPE $em --seed "$s" --output-dir "$D/mt"
  step "seed$s ${P##*/} $t zero-label stage 1" "$D/zl_s1/results.json" \
    $CTR zero-label --checkpoint "$P/s1" $SCOPE $am --seed "$s" --n-inputs $ZL_INPUTS \
    --max-templates $ZL_T --output-dir "$D/zl_s1"
  if [ -d "$P/free/final" ]; then
    step "seed$s ${P##*/} $t zero-label free prompts" "$D/zl_free/results.json" \
      $CTR zero-label --checkpoint "$P/free" $SCOPE $am --seed "$s" --n-inputs $ZL_INPUTS \
      --max-templates $ZL_T --output-dir "$D/zl_free"
  fi
  if [ "$has_s2" = 1 ]; then
    step "seed$s ${P##*/} $t zero-label stage 2" "$D/zl_s2/results.json" \
      $CTR zero-label --checkpoint "$P/s2" $SCOPE $am --seed "$s" --n-inputs $ZL_INPUTS \
      --max-templates $ZL_T --output-dir "$D/zl_s2"
  fi
  local fs_ckpt="$P/$FS_FROM"
  [ -d "$fs_ckpt" ] || fs_ckpt="$P/s1"
  step "seed$s ${P##*/} $t few-shot" "$D/fs/results.json" \
    $CTR few-shot --checkpoint "$fs_ckpt" $SCOPE $am --seed "$s" --shots $SHOTS --holdout 0.25 \
    --values seen --max-sweeps $SWEEPS --max-templates $FS_T --prompt-tuning --prompt-steps $PT_STEPS \
    --output-dir "$D/fs"
}

backbone() {  # backbone SEED TASK: per seed on a seeded subsample; on a full set once, seed 0
  local s=$1 t=$2 out="$R/backbone/$2"
  if subsampled "$t"; then out="$out/seed$s"; else s=0; fi
  step "backbone $t seed$s" "$out/results.json" \
    $CTR eval --model "$MODEL" $SCOPE ${EVALMAX:+--max-templates $EVALMAX} --seed "$s" --output-dir "$out"
}

for S in $SEEDS; do
  M="$R/seed$S/main"
  if has_pair main; then
    # 1. training at one budget: stage 1 (LM frozen), the multi-task baseline (LM trained, no codes)
    #    and stage 2 from the stage-1 model (everything trained), same tasks / steps / batch
    step "seed$S main stage 1" "$M/s1/final/ctr_config.json" \
      $CTR train --stage 1 $(train_flags "$S" $MIX) --output-dir "$M/s1"
    step "seed$S main multi-task baseline" "$M/mt/final/ctr_config.json" \
      $CTR train --stage 2 --no-codes $(train_flags "$S" $MIX) --output-dir "$M/mt"
    step "seed$S main stage 2" "$M/s2/final/ctr_config.json" \
      $CTR train --stage 2 --init-from "$M/s1" $(train_flags "$S" $MIX) --output-dir "$M/s2"
    # 1b. the ceiling of stage 1: one free 10-vector prompt per training task (multi-task prompt tuning
    #     of the frozen LM, lr 1e-2, same tasks, sampler, steps and batch), saved as a CTR model
    #     so that `ctr zero-label` scores it like the codes
    step "seed$S main free prompts" "$M/free/final/ctr_config.json" \
      $CTR free-prompts $(free_flags "$S" $MIX) --output-dir "$M/free"
    # 2. the held-out tasks of the main mixture
    for T in $MAIN_TASKS; do
      backbone "$S" "$T"
      columns "$S" "$M" "$T" 1
    done
  fi
  # 3. leave-one-dataset-out: a stage-1 / baseline pair without LODO_DROP*, scored on LODO_TASK
  if has_pair lodo && [ -n "$LODO_DROP" ]; then
    L="$R/seed$S/lodo"
    step "seed$S lodo stage 1" "$L/s1/final/ctr_config.json" \
      $CTR train --stage 1 $(train_flags "$S" $LODO_MIX) --output-dir "$L/s1"
    step "seed$S lodo multi-task baseline" "$L/mt/final/ctr_config.json" \
      $CTR train --stage 2 --no-codes $(train_flags "$S" $LODO_MIX) --output-dir "$L/mt"
    backbone "$S" "$LODO_TASK"
    columns "$S" "$L" "$LODO_TASK" 0
  fi
done
echo "EVIDENCE_DONE ($MODE): python scripts/compile_evidence.py $R"
