"""Find and load what a command is pointed at: a run folder, a checkpoint, a CTR model
folder, or a bare Hugging Face backbone.

A run folder holds final/ (the last model) and checkpoint-N/ (each with model/); a model
folder holds ctr_config.json. Every command that takes a CTR model goes through
`find_model_dir`, so they all accept the same three kinds of path, and a bare NAME that is
no folder here: a released codebook, `checkpoints/NAME/` of this repository or of
$CTR_CHECKPOINTS (`python -m ctr.interop.release` makes one from a stage-1 run).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ctr.config import CTRConfig
from ctr.core.backbone import default_device, load_backbone
from ctr.core.model import CODE_TABLE_FILE, CONFIG_FILE, CTRModel
from ctr.fileio import complete_dir, read_json

HF_CONFIG_FILE = "config.json"


RELEASES_ENV = "CTR_CHECKPOINTS"


def release_roots() -> list[Path]:
    """Where released codebooks are looked up by name: $CTR_CHECKPOINTS, then the
    repository's checkpoints/ (present in a clone, not in an installed wheel)."""
    roots = [Path(os.environ[RELEASES_ENV])] if os.environ.get(RELEASES_ENV) else []
    return roots + [Path(__file__).resolve().parents[2] / "checkpoints"]


def releases() -> list[str]:
    """Names of the released codebooks found under `release_roots`."""
    return sorted({p.parent.name for r in release_roots() if r.is_dir() for p in r.glob(f"*/{CONFIG_FILE}")})


def _candidates(path: Path) -> list[Path]:
    if not path.exists() and len(path.parts) == 1:  # a bare name: a released codebook
        return [r / path for r in release_roots()]
    final = complete_dir(path / "final")  # final/, or its backup mid-swap
    return [c for c in (final, path / "model", path) if c is not None]


def find_model_dir(path: str | Path) -> Path | None:
    """The CTR model folder of a run folder (its final/), a checkpoint (its model/) or
    the model folder itself; None when there is none."""
    for c in _candidates(Path(path)):
        if (c / CONFIG_FILE).exists():
            return c
    return None


def require_model_dir(path: str | Path, flag: str = "--checkpoint") -> Path:
    """As `find_model_dir`, but a missing model is an error naming the flag."""
    found = find_model_dir(path)
    if found is None:
        known = ", ".join(releases()) or "none"
        raise FileNotFoundError(f"{flag} {path}: not a CTR checkpoint (no {CONFIG_FILE} in it, "
                                f"its final/ or model/) nor a released codebook (released: {known})")
    return found


def load_model(name_or_path: str, flag: str = "--checkpoint") -> CTRModel:
    """A CTR checkpoint (with or without codes) or a bare backbone wrapped without codes,
    on `default_device()` (the GPU when there is one). A local folder that is neither is
    an error (it would otherwise be tried as a hub id)."""
    found = find_model_dir(name_or_path)
    if found is not None:
        model = CTRModel.from_pretrained(found)
    else:
        p = Path(name_or_path)
        if p.is_dir() and not (p / HF_CONFIG_FILE).exists():
            raise FileNotFoundError(f"{flag} {p}: neither a CTR checkpoint ({CONFIG_FILE}) "
                                    "nor a Hugging Face model folder")
        backbone, tok = load_backbone(name_or_path)
        model = CTRModel(backbone, CTRConfig(use_codes=False, backbone=name_or_path), tok)
    return model.to(default_device())


def load_code_table(path: str | Path, flag: str = "--checkpoint"
                    ) -> tuple[dict[str, list[int]], dict[str, Any], Path]:
    """(code table, CTR config dict, model folder). The table is read from code_table.json,
    which save_pretrained writes, so no backbone is loaded; older folders without it are
    loaded to compute it."""
    folder = require_model_dir(path, flag)
    config = read_json(folder / CONFIG_FILE)
    if not config.get("use_codes", True):
        raise ValueError(f"{folder}: a model trained without codes (use_codes=false) has no codes")
    if (folder / CODE_TABLE_FILE).exists():
        table = read_json(folder / CODE_TABLE_FILE)
    else:
        table = CTRModel.from_pretrained(folder).code_table()
    if not table:
        raise ValueError(f"{folder}: the code table is empty")
    return table, config, folder
