"""Where a CTR model folder is: a run folder, a checkpoint, a model folder or a release name.

A run folder holds final/ (the last model) and checkpoint-N/ (each with model/); a model
folder holds ctr_config.json. A bare NAME that is no folder here is a release:
`checkpoints/NAME/` of $CTR_CHECKPOINTS or of this repository (`python -m
ctr.interop.release` makes one). A release holds release.json with the sha256 of every file
it shipped; a folder whose files do not match is refused, naming the file, before anything
is loaded from it (a truncated download, a Git LFS pointer, an edited file).

This module loads nothing (it sits below `ctr.core.model`, whose `from_pretrained` uses it).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ctr.fileio import complete_dir, read_json

CONFIG_FILE = "ctr_config.json"  # what makes a folder a CTR model folder
RELEASE_FILE = "release.json"  # what makes a model folder a release
RELEASES_ENV = "CTR_CHECKPOINTS"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def release_roots() -> list[Path]:
    """Where releases are looked up by name: $CTR_CHECKPOINTS, then the repository's
    checkpoints/ (present in a clone, not in an installed wheel)."""
    roots = [Path(os.environ[RELEASES_ENV])] if os.environ.get(RELEASES_ENV) else []
    return roots + [Path(__file__).resolve().parents[2] / "checkpoints"]


def releases() -> list[str]:
    """Names of the releases found under `release_roots`."""
    return sorted({p.parent.name for r in release_roots() if r.is_dir() for p in r.glob(f"*/{CONFIG_FILE}")})


def release_files(info: dict[str, Any]) -> dict[str, str]:
    """{file relative to the release: sha256} that release.json vouches for (older releases
    recorded the weights file only)."""
    if "files" in info:
        return {name: entry["sha256"] for name, entry in info["files"].items()}
    return {"ctr_weights.safetensors": info["weights_sha256"]}


_verified: dict[tuple[str, int, int], bool] = {}  # (file, size, mtime) already hashed


def verify_release(folder: str | os.PathLike) -> None:
    """Refuse a release folder whose files differ from the sha256 its release.json records
    (ValueError naming the file); a folder without release.json is no release and passes."""
    folder = Path(folder)
    if not (folder / RELEASE_FILE).is_file():
        return
    for name, want in release_files(read_json(folder / RELEASE_FILE)).items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path}: missing, but {folder / RELEASE_FILE} lists it: the release "
                             "is incomplete; copy it again or release it again")
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if _verified.get(key):
            continue
        got = sha256(path)
        if got != want:
            raise ValueError(f"{path}: sha256 {got[:16]}... does not match {folder / RELEASE_FILE} "
                             f"({want[:16]}...): the file changed since it was released (a truncated "
                             "copy or a Git LFS pointer?); restore it or release the run again")
        _verified[key] = True


def _candidates(path: Path) -> list[Path]:
    if not path.exists() and len(path.parts) == 1:  # a bare name: a release
        return [r / path for r in release_roots()]
    final = complete_dir(path / "final")  # final/, or its backup mid-swap
    return [c for c in (final, path / "model", path) if c is not None]


def find_model_dir(path: str | os.PathLike) -> Path | None:
    """The CTR model folder of a run folder (its final/), a checkpoint (its model/), the
    model folder itself or a release name; None when there is none. A release found is
    verified first (`verify_release`)."""
    for c in _candidates(Path(path)):
        if (c / CONFIG_FILE).exists():
            verify_release(c)
            return c
    return None


def require_model_dir(path: str | os.PathLike, flag: str = "--checkpoint") -> Path:
    """As `find_model_dir`, but a missing model is an error naming the flag and the releases."""
    found = find_model_dir(path)
    if found is None:
        raise FileNotFoundError(f"{flag} {path}: not a CTR checkpoint (no {CONFIG_FILE} in it, "
                                f"its final/ or model/) nor a release ({released_words()})")
    return found


def released_words() -> str:
    names = releases()
    return f"released: {', '.join(names)}" if names else "none released under " + ", ".join(
        str(r) for r in release_roots())
