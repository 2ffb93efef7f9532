"""What a code is outside the model: parsing, validation, code files, usage statistics.

A code is L integers in [0, K). It reaches the tool four ways: typed on a command line
(`--code 3,17,...`), from a checkpoint's code table (one per training task), from the
codes file that `ctr zero-label` / `ctr few-shot` write, and inside a training run (where
`code_usage` summarises how the codebook is used).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from ctr.fileio import read_json


def parse_code(text: str, flag: str = "--code") -> list[int]:
    """'3, 17,5' -> [3, 17, 5]; a clear error naming the flag otherwise."""
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers") from None


def validate_code(code: Any, code_length: int, codebook_size: int, where: str) -> list[int]:
    """The code as a list of ints, or a ValueError naming `where` (a flag, a file, a task)."""
    if (not isinstance(code, (list, tuple)) or len(code) != code_length
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < codebook_size
                       for c in code)):
        raise ValueError(f"{where}: expected {code_length} integers in [0, {codebook_size}), "
                         f"got {code!r}")
    return [int(c) for c in code]


def code_for_task(table: Mapping[str, Any], task: str, where: str) -> Any:
    """table[task], or an error saying which table lacks it and what it has."""
    if task not in table:
        raise ValueError(f"task {task!r}: not in {where} ({len(table)} tasks, "
                         f"e.g. {sorted(table)[:5]})")
    return table[task]


# ---- codes files ---------------------------------------------------------------------
def codes_file_content(codes: dict[str, Any], exclude: dict[str, list[int]]) -> dict[str, Any]:
    """What `ctr zero-label` / `ctr few-shot` write to codes.json: the code per task and,
    per task, the evaluation-split indices its selection used (kept out of `ctr eval`)."""
    return {"codes": codes, "exclude": {t: sorted(exclude.get(t, [])) for t in codes}}


def read_codes_file(path: str | os.PathLike, flag: str = "--codes-file"
                    ) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """(codes {task: code}, exclude {task: [eval index]}) of a codes file: the current
    {"codes": {...}, "exclude": {...}} or an older plain {task: code} (nothing excluded)."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{flag} {path}: expected a JSON object")
    if not isinstance(raw.get("codes"), dict):  # old format; a task named "codes" has a list
        return raw, {}
    exclude = raw.get("exclude") or {}
    if (not isinstance(exclude, dict) or not all(isinstance(v, list) for v in exclude.values())
            or not all(isinstance(i, int) for v in exclude.values() for i in v)):
        raise ValueError(f"{flag} {path}: 'exclude' must map tasks to lists of example indices")
    return raw["codes"], exclude


def read_checked_codes(path: str, code_length: int, codebook_size: int,
                       flag: str = "--codes-file") -> dict[str, list[int]]:
    """The {task: code} of a codes file, every code checked against (L, K)."""
    table = read_codes_file(path, flag)[0]
    return {t: validate_code(code, code_length, codebook_size, f"{flag} {path}: task {t}")
            for t, code in table.items()}


# ---- usage statistics ----------------------------------------------------------------
def code_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, Any]:
    """Per-position perplexity and number of distinct values over a set of codes [N, L]."""
    perplexity, in_use = [], []
    for pos in range(codes.shape[1]):
        counts = torch.bincount(codes[:, pos], minlength=codebook_size).float()
        p = counts / counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        perplexity.append(round(float(entropy.exp()), 4))
        in_use.append(int((counts > 0).sum()))
    return {"perplexity": perplexity, "codes_in_use": in_use,
            "distinct_values": int(codes.unique().numel())}


def format_table(table: Mapping[str, Sequence[int]]) -> str:
    """A code table as aligned text, one task per line (`ctr codes`)."""
    width = max((len(n) for n in table), default=4)
    return "\n".join(f"{name:<{width}}  {' '.join(f'{c:3d}' for c in code)}"
                     for name, code in table.items())
