"""Presets and codebook recipes: what `ctr train` uses for the options a run does not set
(`ctr.config.TrainConfig.resolved`). Explicit flags override them.

A preset holds training hyper-parameters per stage; a codebook recipe holds the options of
the CTR module (`ctr.config.CTRConfig` fields) that differ from CTRConfig's defaults, which
are the authors' module."""
from __future__ import annotations

from typing import Any

# The authors' CTR module and VQ (CTRConfig's defaults): random projections, a uniform
# codebook that only the VQ loss moves, the batch's tasks quantised.
PAPER_MODEL: dict[str, Any] = {}
# Code values start as token embeddings and are the soft prompt itself (identity decoder),
# each task starts on its own code, and the LM loss trains the values directly, so a frozen
# LM's prompt learns at the speed of prompt tuning (results/stage1_diagnosis/cpu/). Over a
# few hundred steps the encodings drift together and the codebook collapses onto a few
# values (results/codebook_proxy/).
PROMPT_MODEL = dict(PAPER_MODEL, codebook_init="vocab", decoder_init="identity", encoder_init="spread",
                    codebook_lm_grad=True)
# The prompt recipe's start with a codebook that follows the tasks: every task's encoding is
# quantised at every step, the codebook's centroids are an EMA k-means of them, values no task
# uses are revived on a task encoding far from every value in use, and an LM-trained offset
# per value keeps the prompt learning as fast as the prompt recipe's (results/codebook_proxy/).
STABLE_MODEL = dict(PROMPT_MODEL, codebook_lm_grad=False, quantizer="ema", quantize_all_tasks=True,
                    dead_code_threshold=1.0, value_offsets=True)
# The stable codebook with tasks that start on codes grouped by their descriptions (tasks of
# one type share values), held there in stage 1 by task embeddings at 0.1 x lr
# (`ctr.config.train.GROUPED_TASK_EMBEDDING_LR_SCALE`): its codes keep the type structure that
# learning from random codes does not find at the scale measured (results/codebook_proxy/).
GROUPED_MODEL = dict(STABLE_MODEL, encoder_init="grouped")
CODEBOOK_RECIPES: dict[str, dict[str, Any]] = {
    "paper": PAPER_MODEL, "prompt": PROMPT_MODEL, "stable": STABLE_MODEL, "grouped": GROUPED_MODEL}
# The recipe of each preset (--codebook-recipe overrides it, each flag overrides its part):
# presets meant for long runs train the grouped codebook; the short CPU demo and the tests'
# tiny runs keep theirs.
PRESET_RECIPES = {"paper": "grouped", "cpu-small": "grouped", "cpu-demo": "prompt", "tiny": "paper"}

# Stage-dependent hyper-parameters; explicit flags override them.
PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    # The paper: 10k steps each, global batch 2048 / 1024, Adam lr 1e-2 / 1e-4, 320 warmup.
    "paper": {1: dict(steps=10000, batch_size=2048, micro_batch_size=32, lr=1e-2, warmup_steps=320,
                     projection_lr_scale=1.0),
              2: dict(steps=10000, batch_size=1024, micro_batch_size=16, lr=1e-4, warmup_steps=320,
                      projection_lr_scale=1.0)},
    # A few minutes of CPU with SmolLM2. The released code never updated its encoder; ours
    # does, and Adam at lr 1e-2 on a 576-wide projection moves codes by ~5 units a step
    # (VQ loss 6 -> 18 in 16 SmolLM2 steps); 0.01 x lr keeps it flat (results/lr_check/cpu/lr_check.md).
    "cpu-small": {1: dict(steps=200, batch_size=16, micro_batch_size=8, lr=1e-2, warmup_steps=10,
                       projection_lr_scale=0.01),
                  2: dict(steps=100, batch_size=16, micro_batch_size=8, lr=1e-4, warmup_steps=10,
                       projection_lr_scale=1.0)},
    "cpu-demo": {1: dict(steps=40, batch_size=8, micro_batch_size=8, lr=1e-2, warmup_steps=4,
                      projection_lr_scale=0.01),
                 # 50 steps: what fits the demo's 15 minutes (results/demo/cpu/sst2_demo.md)
                 2: dict(steps=50, batch_size=8, micro_batch_size=8, lr=1e-4, warmup_steps=5,
                      projection_lr_scale=1.0)},
    # Tests on tiny random models.
    "tiny": {1: dict(steps=6, batch_size=4, micro_batch_size=2, lr=1e-2, warmup_steps=1,
                    projection_lr_scale=1.0),
             2: dict(steps=6, batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=1,
                    projection_lr_scale=1.0)},
}
