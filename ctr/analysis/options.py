"""The options of `ctr analyze` (`AnalyzeConfig`), shared by the report and the steering
experiment without either importing the other for them."""
from __future__ import annotations

from dataclasses import dataclass

from ctr.config import opt


@dataclass
class AnalyzeConfig:
    """`ctr analyze`: what a checkpoint's codes mean (+ an optional steering experiment)."""

    checkpoint: str = opt("", "CTR checkpoint (run folder, final/ or model folder); "
                              "may also be given as the positional argument")
    codes_file: str | None = opt(None, "JSON {task: code} of adapted codes (ctr zero-label / "
                                       "few-shot), placed among the training codes")
    types_file: str | None = opt(None, "JSON {task: task type} for tasks the T0 manifest does "
                                       "not know (users' JSONL tasks); overrides the manifest")
    factors_file: str | None = opt(
        None, "JSON {task: {factor: value}}, e.g. the factors.json of `ctr synth`: each factor "
              "gets its own association table and heatmap, and the first factor serves as the "
              "task type unless --types-file is given")
    data_dir: str | None = opt(None, "data folder with t0_train_manifest.tsv "
                                     "(default: $CTR_DATA_DIR or ../shared/data)")
    output_dir: str = opt("runs/analysis", "where analysis.json, analysis.md and the PNGs go")
    min_count: int = opt(2, "a value must be used by at least this many tasks to be reported "
                            "as type-specific (a value of one task is trivially pure)")
    top: int = opt(15, "how many type-specific values the report names")
    permutations: int = opt(200, "label shuffles for the chance level of mutual information")
    seed: int = opt(0, "seed for the shuffles, steering inputs, random controls and bootstrap")
    steer: bool = opt(False, "also run the controllability experiment (loads the model)")
    steer_tasks: list[str] = opt([], "tasks to steer: training tasks, or tasks of --codes-file "
                                     "(default: up to 3 training tasks with answer choices)")
    steer_type: str = opt("summarization", "task type whose most specific values replace the "
                                           "task's own")
    steer_positions: list[int] = opt([], "positions to replace (default: the best "
                                         "--steer-n-positions for each task)")
    steer_n_positions: int = opt(1, "how many positions to replace when not given")
    steer_inputs: int = opt(16, "inputs per steered task")
    steer_random: int = opt(8, "random replacement codes per task (the control)")
    steer_max_new_tokens: int = opt(32, "new tokens at most per generation")
    steer_batch_size: int = opt(32, "rows per generate call (codes mixed within a batch)")
    bootstrap: int = opt(1000, "bootstrap resamples for the 95 percent intervals")
