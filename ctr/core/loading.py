"""Find and load what a command is pointed at: a run folder, a checkpoint, a CTR model
folder, a release name, or a bare Hugging Face backbone.

Every command that takes a CTR model goes through `find_model_dir` (ctr.core.locate), so
they all accept the same kinds of path, and a bare NAME that is no folder here: a release,
`checkpoints/NAME/` of this repository or of $CTR_CHECKPOINTS (`python -m
ctr.interop.release` makes one from a stage-1 run or a LoRA stage-2 / baseline run), whose
files are checked against the sha256 in its release.json before it loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ctr.config import CTRConfig
from ctr.core.backbone import default_device, load_backbone
from ctr.core.locate import (RELEASES_ENV, find_model_dir, release_roots, released_words,  # noqa: F401
                             releases, require_model_dir)
from ctr.core.model import CODE_TABLE_FILE, CONFIG_FILE, CTRModel
from ctr.fileio import read_json

HF_CONFIG_FILE = "config.json"


def load_model(name_or_path: str, flag: str = "--checkpoint", backbone_ok: bool = True) -> CTRModel:
    """A CTR checkpoint or release (with or without codes) or, with `backbone_ok`, a bare
    backbone wrapped without codes, on `default_device()` (the GPU when there is one). A
    local folder that is neither is an error (it would otherwise be tried as a hub id); so
    is a bare name that is no release and does not load as a backbone: the error lists the
    releases instead of the hub's connection error."""
    found = find_model_dir(name_or_path) if backbone_ok else require_model_dir(name_or_path, flag)
    if found is not None:
        model = CTRModel.from_pretrained(found)
    else:
        p = Path(name_or_path)
        if p.is_dir() and not (p / HF_CONFIG_FILE).exists():
            raise FileNotFoundError(f"{flag} {p}: neither a CTR checkpoint ({CONFIG_FILE}) "
                                    "nor a Hugging Face model folder")
        try:
            backbone, tok = load_backbone(name_or_path)
        except (OSError, ValueError) as e:
            if len(p.parts) != 1 or p.exists():
                raise
            raise FileNotFoundError(f"{flag} {name_or_path}: no CTR checkpoint or release of that "
                                    f"name ({released_words()}), and no backbone loads by that name "
                                    f"({type(e).__name__})") from e
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
