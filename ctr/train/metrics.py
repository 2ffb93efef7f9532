"""One `metrics.jsonl` record per logged optimizer step (what `ctr analyze` and the
model card read back), and the codebook-health report a run with codes ends with."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ctr.core.code_health import HEALTH_FILE, HEALTH_MARKDOWN, codebook_health
from ctr.core.codes import code_usage
from ctr.core.model import CTRModel
from ctr.fileio import write_json


def step_record(step: int, stats: dict[str, float], lr: float, grad_norm: float, step_time: float,
                tokens: int, extra: dict[str, Any], core: CTRModel, revival: bool,
                types: Sequence[str] | None = None) -> dict[str, Any]:
    """Losses, lr, gradient norm, timing and real token count of step `step` (1-based, the
    steps done), plus the codebook's use and health when the model has codes (`types`: the
    task type of each training task, for the same-type minus different-type similarity)."""
    record = {"step": step, **{k: round(v, 6) for k, v in stats.items()}, "lr": lr,
              "grad_norm": round(float(grad_norm), 6), "step_time": round(step_time, 4),
              "tokens": tokens, **extra}
    if core.config.use_codes:
        codes = core.task_codes().cpu()
        usage = code_usage(codes, core.config.codebook_size)
        record.update(code_perplexity=usage["perplexity"], codes_in_use=usage["codes_in_use"],
                      distinct_values=usage["distinct_values"],
                      **codebook_health(codes, core.config.codebook_size, types).scalars())
        if revival and core.config.dead_code_threshold > 0:
            record["revived_codes"] = core.quantizer.revived
    return record


def write_health(folder: Path, core: CTRModel, types: Sequence[str] | None = None) -> None:
    """codebook_health.json and .md of the model's code table (`ctr.core.code_health`)."""
    health = codebook_health(core.task_codes().cpu(), core.config.codebook_size, types)
    write_json(Path(folder) / HEALTH_FILE, health.to_dict())
    (Path(folder) / HEALTH_MARKDOWN).write_text("# Codebook health\n\n" + health.markdown() + "\n")
