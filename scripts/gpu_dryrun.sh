#!/usr/bin/env bash
# CPU dry run of the GPU call, end to end, in a fresh venv that has only the GPU image's
# packages: exits 1 when a package the steps need is missing from the carried wheels, or
# when any step of `gpu_run.sh call` (or the steps given) fails (tiny model, a few examples: DRY=1).
#   bash scripts/gpu_dryrun.sh [STEP...]   (default `call`; a few minutes here; DRY_DIR=/tmp/ctr_gpu_dryrun)
# 1. .whl: the wheel set for CPython 3.12 manylinux x86_64 (scripts/gpu_wheels.py), and for its
#    wheels that are not pure Python the same versions for this interpreter (.whl_here)
# 2. the set installs for CPython 3.12 as on the GPU machine (pip's tag check, nothing written)
# 3. a fresh venv that sees only links to this environment's copies of the image's packages
#    (scripts/gpu_image_view.py): not datasets, gguf, vector-quantize-pytorch, ...
# 4. the wheels installed as the GPU machine does: --no-index --no-deps --target an empty folder
# 5. scripts/gpu_check_env.py (every module imports) and `gpu_run.sh call` (or the steps given) with DRY=1
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
D=${DRY_DIR:-/tmp/ctr_gpu_dryrun}
rm -rf "$D"; mkdir -p "$D"
$PY scripts/gpu_wheels.py --dest .whl --twins .whl_here
$PY -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: --target "$D/cp312" \
  --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 .whl/*.whl
$PY -m venv --without-pip "$D/venv"
$PY scripts/gpu_image_view.py "$D/image"
echo "$D/image" > "$(echo "$D"/venv/lib/python3*/site-packages)/gpu_image.pth"
wheels=()
for w in .whl/*.whl; do  # this interpreter's twin where the carried wheel is for CPython 3.12 only
  name=$(basename "$w" | cut -d- -f1-2)
  twin=$(ls .whl_here/"$name"-*.whl 2>/dev/null | head -1 || true)
  wheels+=("${twin:-$w}")
done
$PY -m pip install -q --no-index --no-deps --no-compile --target "$D/site" "${wheels[@]}"
export PATH="$D/venv/bin:$PATH" PYTHONPATH="$D/site:$PWD" PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1
export CTR_DATA_CACHE="$D/data_cache" CTR_CACHE_DIR="$D/ctrcache" TOKENIZERS_PARALLELISM=false
[ "$(command -v python3)" = "$D/venv/bin/python3" ]
python3 -c "import sys; assert 'site-packages' not in ' '.join(p for p in sys.path if '$D' not in p and 'pyenv' not in p), sys.path"
python3 scripts/gpu_check_env.py
DRY=1 R="$D/runs" OUT="$D/out" LIM_EVIDENCE=${LIM_EVIDENCE:-1800} LIM_THROUGHPUT=${LIM_THROUGHPUT:-1800} \
  LIM_PROFILE=${LIM_PROFILE:-900} LIM_ENV=${LIM_ENV:-600} LIM_PACKCHECK=${LIM_PACKCHECK:-600} \
  LIM_RELEASE=${LIM_RELEASE:-1800} LIM_RELNEAR=${LIM_RELNEAR:-1800} bash scripts/gpu_run.sh "${@:-call}"
cat "$D/out/summary.txt"
files=$(find "$D/out" -type f | wc -l)
[ "$files" -le 8 ] || { echo "gpu_dryrun: $files files under OUT (at most 8 come back)"; exit 1; }
if grep -q 'rc=[1-9]' "$D/out/summary.txt"; then echo "gpu_dryrun: a step failed (above)"; exit 1; fi
tar tzf "$D/out/results.tgz" | grep -E 'profile_train.txt|throughput_stage[12].json|near_zero_label/results.json' | sort
echo "gpu_dryrun: ok ($files files under OUT, $(du -sh "$D/out" | cut -f1))"
