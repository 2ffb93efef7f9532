"""`ctr export` options (the CLI is generated from these fields; the logic is in
`ctr.interop.export`)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from ctr.config import opt


class ExportFormat(str, Enum):
    """What `ctr export` writes."""

    PEFT = "peft"  # a PEFT PROMPT_TUNING adapter: adapter_config.json + adapter_model.safetensors
    TENSOR = "tensor"  # soft_prompt.safetensors: the [L, hidden] prompt, for engines taking embeddings


DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ExportConfig:
    """`ctr export`: one code of a checkpoint as a PEFT prompt-tuning adapter or a tensor."""

    checkpoint: str = opt("", "CTR checkpoint (run folder, final/ or model folder); may also be "
                              "given positionally")
    task: str | None = opt(None, "export the code of this training task (the checkpoint's code table)")
    code: str | None = opt(None, "export this code, e.g. 3,17,5,... (L integers in [0, K))")
    codes_file: str | None = opt(None, "a codes file of ctr zero-label / few-shot; pick the task "
                                       "with --for-task")
    for_task: str | None = opt(None, "the task of --codes-file to export (may be left out when "
                                     "the file holds one task)")
    format: Literal["peft", "tensor"] = opt("peft", "peft: a PEFT PROMPT_TUNING adapter folder; "
                                                    "tensor: soft_prompt.safetensors [L, hidden] only")
    output: str = opt("", "output folder (created; see --overwrite)")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "dtype of the exported prompt (the model computes it in float32)")
    overwrite: bool = opt(False, "replace --output if it exists and is not empty")

    def __post_init__(self) -> None:
        formats = tuple(f.value for f in ExportFormat)
        if self.format not in formats:
            raise ValueError(f"--format {self.format!r}: must be one of {', '.join(formats)} "
                             "(peft: a PEFT adapter folder; tensor: the bare [L, hidden] prompt)")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: must be one of {', '.join(DTYPES)}")
