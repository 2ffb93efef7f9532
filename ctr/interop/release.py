"""Release a trained CTR model by name: its CTR weights and LoRA adapter, never backbone weights.

    python -m ctr.interop.release RUN NAME [--dest checkpoints] [--dtype bf16] [--notes FILE] [--force]

What can be released (RUN: a run folder, checkpoint or model folder):
- a stage-1 codebook (backbone frozen): the CTR weights;
- a stage-2 model trained with `--lora`: the CTR weights and the LoRA adapter (lora/);
- a multi-task baseline trained with `--no-codes --lora`: the LoRA adapter alone.
A model whose backbone was trained in full cannot be released: its weights are the backbone's.
The backbone is referenced by the name in ctr_config.json (the embedded `smollm2`, a hub id)
and loaded as usual, so a release is a few MB.

DEST/NAME/ (written atomically) holds the model files (ctr_config.json,
ctr_weights.safetensors, code_table.json, lora/), the run's metrics.jsonl, train_config.json,
resolved_config.json and provenance.json (the training command, commit, hardware and date, where the run has one),
a model card README.md (what it is, how it was trained, how to load it by name, --notes
appended) and release.json: the source, dtype, the release's provenance and the sha256 and
size of every model file. The release is loaded once and must reproduce the run's code table.
Every command then takes NAME where it takes a checkpoint (`ctr eval --model NAME`, `ctr
zero-label --checkpoint NAME`, `ctr few-shot`, `ctr export NAME`, `CTRModel.from_pretrained
(NAME)`), resolved under checkpoints/ or $CTR_CHECKPOINTS by `ctr.core.locate`, which refuses
a release whose model files do not match their sha256.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ctr.config import RESOLVED_CONFIG_FILE, TRAIN_CONFIG_FILE
from ctr.core.locate import RELEASE_FILE, require_model_dir, sha256
from ctr.core.lora import LORA_DIR
from ctr.core.model import CODE_TABLE_FILE, CONFIG_FILE, WEIGHTS_FILE, CTRModel
from ctr.core.model_card import CARD_FILE, CardInfo, model_card
from ctr.fileio import atomic_dir, read_json, read_jsonl, write_json
from ctr.provenance import PROVENANCE_FILE, provenance
from ctr.tasks.mixture import data_dir, read_manifest

RUN_FILES = ("metrics.jsonl", TRAIN_CONFIG_FILE, RESOLVED_CONFIG_FILE, PROVENANCE_FILE)
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def kind(cfg: dict[str, Any]) -> str:
    """What a model folder is, in words; ValueError for what cannot be released."""
    if cfg.get("backbone_trained"):
        raise ValueError("this model trained its whole backbone (stage 2 or the baseline without "
                         "--lora); a release holds CTR weights and LoRA adapters, never backbone "
                         "weights: train it with --lora, or release the stage-1 run")
    if cfg.get("lora"):
        return "CTR stage 2 (codes and LoRA adapters trained)" if cfg.get("use_codes", True) \
            else "multi-task prompted baseline (LoRA adapters, no codes)"
    if not cfg.get("use_codes", True):
        raise ValueError("a model without codes and without a LoRA adapter is the bare backbone: "
                         "there is nothing to release")
    return "CTR stage 1 (codes trained, backbone frozen)"


def check_loads(folder: Path, source: Path) -> CTRModel:
    """The release loads (backbone by name) and its weights give the source's code table:
    bf16 rounding of the encoder must not move a task to another code."""
    want = read_json(source / CODE_TABLE_FILE) if (source / CODE_TABLE_FILE).exists() else None
    model = CTRModel.from_pretrained(folder)
    got = model.code_table()
    if want is not None and got != want:
        moved = sorted(n for n in want if got.get(n) != want[n])
        raise ValueError(f"--dtype: the stored weights change the code of {len(moved)} task(s) "
                         f"({', '.join(moved[:5])}): release in fp32")
    return model


def _convert(src: Path, dst: Path, dtype: str) -> None:
    weights = load_file(str(src))
    save_file({k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in weights.items()},
              str(dst))


def release(run: str | Path, name: str, dest: str | Path = "checkpoints", dtype: str = "fp32",
            force: bool = False, notes: str = "") -> Path:
    """Write DEST/NAME (atomically) from the model of `run`; returns the folder."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"NAME {name!r}: a release name is one plain folder name")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    model_dir = require_model_dir(run, "RUN")
    cfg = read_json(model_dir / CONFIG_FILE)
    try:
        what = kind(cfg)
    except ValueError as e:
        raise ValueError(f"RUN {run}: {e}") from None
    target = Path(dest) / name
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists: pass --force to replace it")
    run_dir = model_dir.parent if model_dir.name in ("final", "model") else model_dir
    with atomic_dir(target) as tmp:
        model_files = [CONFIG_FILE, WEIGHTS_FILE, CODE_TABLE_FILE]
        _convert(model_dir / WEIGHTS_FILE, tmp / WEIGHTS_FILE, dtype)
        for f in (CONFIG_FILE, CODE_TABLE_FILE):
            shutil.copy2(model_dir / f, tmp / f)
        if cfg.get("lora"):
            (tmp / LORA_DIR).mkdir()
            shutil.copy2(model_dir / LORA_DIR / LORA_FILES[0], tmp / LORA_DIR / LORA_FILES[0])
            _convert(model_dir / LORA_DIR / LORA_FILES[1], tmp / LORA_DIR / LORA_FILES[1], dtype)
            model_files += [f"{LORA_DIR}/{f}" for f in LORA_FILES]
        for f in RUN_FILES:
            if (run_dir / f).exists():
                shutil.copy2(run_dir / f, tmp / f)
        model = check_loads(tmp, model_dir)
        info = {"name": name, "kind": what, "source": str(Path(run).resolve()), "dtype": dtype,
                "files": {f: {"sha256": sha256(tmp / f), "bytes": (tmp / f).stat().st_size}
                          for f in model_files},
                "provenance": provenance()}
        if (model_dir / RELEASE_FILE).exists():  # re-released from a release: keep where it came from
            info["released_from"] = read_json(model_dir / RELEASE_FILE)
        (tmp / CARD_FILE).write_text(release_card(tmp, model, info, notes))
        write_json(tmp / RELEASE_FILE, info)
    return target


def release_card(folder: Path, model: CTRModel, info: dict[str, Any], notes: str = "") -> str:
    """The model card of a release: what it is and holds, how it was trained (the run's
    provenance), the card of the model itself with commands that load it by name, notes."""
    run = read_json(folder / PROVENANCE_FILE) if (folder / PROVENANCE_FILE).exists() else {}
    metrics = read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").exists() else []
    size = sum(f["bytes"] for f in info["files"].values())
    hw = run.get("hardware") or {}
    rows = [("what", info["kind"]),
            ("files", f"{size / 2 ** 20:.1f} MB of model files ({info['dtype']}); the backbone "
                      f"`{model.config.backbone}` is loaded by name, its weights are not included"),
            ("load", f"`--checkpoint {info['name']}` / `--model {info['name']}` in every command, "
                     f"`CTRModel.from_pretrained({info['name']!r})`; the files are checked against "
                     f"their sha256 in {RELEASE_FILE}"),
            ("trained", f"{run.get('time', 'date not recorded')}, commit "
                        f"`{(run.get('commit') or 'not recorded')[:12]}`"
                        + (f" ({run['commit_note']})" if run.get("commit_note") else "")),
            ("hardware", f"{'GPU ' + hw['gpu'] if hw.get('gpu') else 'CPU'}: {hw.get('cpu', '?')}, "
                         f"{hw.get('cpu_count', '?')} cores, torch {hw.get('torch', '?')}"
             if hw else "not recorded")]
    head = [f"# {info['name']}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    try:  # task types, where the data is here to say them
        types = {Path(f).stem: r["task_type"] for f, r in read_manifest(data_dir()).items()}
    except (OSError, KeyError):
        types = None
    card = model_card(model, CardInfo(metrics=metrics[-1] if metrics else None, task_types=types,
                                      command=run.get("command") or "(not recorded)"), where=info["name"])
    body = card.split("\n# ", 1)[1].split("\n", 1)[1]  # the model card without its title
    front = card.split("\n# ", 1)[0]
    return "\n".join([front, *head, body.rstrip(), *(["", notes.strip()] if notes.strip() else []), ""])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder, checkpoint or model folder (stage 1, or --lora stage 2 / baseline)")
    ap.add_argument("name", help="the release's name (its folder under --dest)")
    ap.add_argument("--dest", default="checkpoints", help="folder of releases")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                    help="precision the weights are stored in (bf16 halves the size)")
    ap.add_argument("--notes", default=None, metavar="FILE", help="Markdown appended to the model card")
    ap.add_argument("--force", action="store_true", help="replace an existing release")
    args = ap.parse_args(argv)
    notes = Path(args.notes).read_text() if args.notes else ""
    out = release(args.run, args.name, args.dest, args.dtype, args.force, notes)
    size = sum(f["bytes"] for f in read_json(out / RELEASE_FILE)["files"].values()) / 2 ** 20
    print(f"[release] {out}: {size:.1f} MB of model files; use it as --checkpoint {args.name}")


if __name__ == "__main__":
    main()
