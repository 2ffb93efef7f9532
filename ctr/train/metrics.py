"""One `metrics.jsonl` record per logged optimizer step (what `ctr analyze` and the
model card read back)."""
from __future__ import annotations

from typing import Any

from ctr.core.codes import code_usage
from ctr.core.model import CTRModel


def step_record(step: int, stats: dict[str, float], lr: float, grad_norm: float, step_time: float,
                tokens: int, extra: dict[str, Any], core: CTRModel, revival: bool) -> dict[str, Any]:
    """Losses, lr, gradient norm, timing and real token count of step `step` (1-based, the
    steps done), plus the codebook's use when the model has codes."""
    record = {"step": step, **{k: round(v, 6) for k, v in stats.items()}, "lr": lr,
              "grad_norm": round(float(grad_norm), 6), "step_time": round(step_time, 4),
              "tokens": tokens, **extra}
    if core.config.use_codes:
        usage = code_usage(core.task_codes().cpu(), core.config.codebook_size)
        record.update(code_perplexity=usage["perplexity"], codes_in_use=usage["codes_in_use"],
                      distinct_values=usage["distinct_values"])
        if revival and core.config.dead_code_threshold > 0:
            record["revived_codes"] = core.quantizer.revived
    return record
