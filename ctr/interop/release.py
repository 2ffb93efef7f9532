"""Release a stage-1 codebook: its CTR weights without the backbone, by name.

    python -m ctr.interop.release RUN NAME [--dest checkpoints] [--dtype bf16] [--force]

copies the model folder of RUN (a run folder, checkpoint or model folder of a frozen-backbone
model) into DEST/NAME/ with its code table and model card, and the run's metrics.jsonl and
train_config.json beside them, plus release.json (source, sha256 of the weights, size,
provenance). The release is loaded once and must
reproduce the run's code table. Every command then takes NAME where it takes a checkpoint
(`ctr zero-label --checkpoint NAME`, `ctr few-shot`, `ctr analyze`), resolved by
`ctr.core.loading` under the repository's checkpoints/ or $CTR_CHECKPOINTS. The backbone is
referenced by the name in ctr_config.json (the embedded `smollm2`, a hub id) and loaded as
usual, so a release is a few MB; a model whose backbone was trained (stage 2) cannot be
released this way: its weights are the backbone's.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ctr.core.loading import require_model_dir
from ctr.core.model import CODE_TABLE_FILE, CONFIG_FILE, WEIGHTS_FILE
from ctr.core.model_card import CARD_FILE
from ctr.fileio import atomic_dir, read_json, write_json
from ctr.provenance import provenance

RUN_FILES = ("metrics.jsonl", "train_config.json")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_loads(folder: Path, source: Path) -> None:
    """The release loads (backbone by name) and its weights give the source's code table:
    bf16 rounding of the encoder must not move a task to another code."""
    from ctr.core.model import CTRModel

    want = read_json(source / CODE_TABLE_FILE) if (source / CODE_TABLE_FILE).exists() else None
    got = CTRModel.from_pretrained(folder).code_table()
    if want is not None and got != want:
        moved = sorted(n for n in want if got.get(n) != want[n])
        raise ValueError(f"--dtype: the stored weights change the code of {len(moved)} task(s) "
                         f"({', '.join(moved[:5])}): release in fp32")


def release(run: str | Path, name: str, dest: str | Path = "checkpoints", dtype: str = "fp32",
            force: bool = False) -> Path:
    """Write DEST/NAME (atomically) from the model of `run`; returns the folder."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"NAME {name!r}: a release name is one plain folder name")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    model_dir = require_model_dir(run, "RUN")
    cfg = read_json(model_dir / CONFIG_FILE)
    if cfg.get("backbone_trained") or (model_dir / "backbone").exists():
        raise ValueError(f"RUN {run}: this model trained its backbone (stage 2); a release holds "
                         "the codebook of a frozen backbone (release the stage-1 run)")
    target = Path(dest) / name
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists: pass --force to replace it")
    run_dir = model_dir.parent if model_dir.name in ("final", "model") else model_dir
    with atomic_dir(target) as tmp:
        weights = load_file(str(model_dir / WEIGHTS_FILE))
        save_file({k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in weights.items()},
                  str(tmp / WEIGHTS_FILE))
        for f in (CONFIG_FILE, CODE_TABLE_FILE, CARD_FILE):
            if (model_dir / f).exists():
                shutil.copy2(model_dir / f, tmp / f)
        for f in RUN_FILES:
            if (run_dir / f).exists():
                shutil.copy2(run_dir / f, tmp / f)
        check_loads(tmp, model_dir)
        write_json(tmp / "release.json", {
            "name": name, "source": str(Path(run).resolve()), "dtype": dtype,
            "weights_sha256": sha256(tmp / WEIGHTS_FILE),
            "weights_bytes": (tmp / WEIGHTS_FILE).stat().st_size, "provenance": provenance()})
    return target


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="stage-1 run folder, checkpoint or model folder")
    ap.add_argument("name", help="the release's name (its folder under --dest)")
    ap.add_argument("--dest", default="checkpoints", help="folder of releases")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                    help="precision the weights are stored in (bf16 halves the size)")
    ap.add_argument("--force", action="store_true", help="replace an existing release")
    args = ap.parse_args(argv)
    out = release(args.run, args.name, args.dest, args.dtype, args.force)
    size = (out / WEIGHTS_FILE).stat().st_size / 2 ** 20
    print(f"[release] {out}: {size:.1f} MB of CTR weights; use it as --checkpoint {args.name}")


if __name__ == "__main__":
    main()
