#!/usr/bin/env bash
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/ctr train --stage 1 --preset cpu-small --steps 100 --batch-size 8 --micro-batch-size 8   --mixing balanced --max-source-len 128 --max-target-len 8 --save-every 50 --resume   --tasks $(.venv/bin/python -m ctr.tasks.named_mixtures near20) --output-dir runs_cpu_recipe/s1_cpu
.venv/bin/ctr zero-label --checkpoint runs_cpu_recipe/s1_cpu --tasks glue_sst2 --n-inputs 16 --max-templates 5   --eval-max-templates 5 --max-examples 200 --output-dir runs_cpu_recipe/zl_sst2
.venv/bin/ctr eval --model smollm2 --tasks glue_sst2 --max-templates 5 --max-examples 200 --output-dir runs_cpu_recipe/zs_sst2
echo DONE
