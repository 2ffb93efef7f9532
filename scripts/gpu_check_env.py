"""Imports what a GPU call runs: every module of ctr and every distribution the project needs
(pyproject.toml's dependencies and the carried wheels, scripts/gpu_wheels.txt).

    python3 scripts/gpu_check_env.py      (exit 1, naming each missing package or failing import)

Run by scripts/gpu_setup.sh on the GPU machine and by the CPU dry run (scripts/gpu_dryrun.sh),
where only the GPU image's packages and the carried wheels are importable. It also prints the
versions of the image packages that the carried ones lean on.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import pkgutil
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_wheels import manifest, project_requirements  # noqa: E402

OPTIONAL = {"ctr.interop.lm_eval_model"}  # needs the lm-eval extra, which no GPU step uses
LEANED_ON = ("torch", "transformers", "accelerate", "huggingface-hub", "pyarrow", "pandas", "fsspec",
             "numpy", "einops", "peft")


def top_level(dist: md.Distribution) -> list[str]:
    listed = dist.read_text("top_level.txt")
    if listed:
        return [m for m in listed.split() if not m.startswith("_")]
    names = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    return sorted(n[:-3] if n.endswith(".py") else n for n in names
                  if not n.endswith((".dist-info", ".libs", ".pth", ".data")) and not n.startswith("_")
                  and (n.endswith(".py") or "." not in n))


def main() -> int:
    failed = []
    names = [r.name for r in project_requirements()] + list(manifest())
    for name in dict.fromkeys(names):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            failed.append(f"{name}: not installed (carry it: scripts/gpu_wheels.py)")
            continue
        for module in top_level(dist):
            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failed.append(f"{name}: import {module}: {type(e).__name__}: {e}")
    import ctr
    for info in pkgutil.walk_packages(ctr.__path__, "ctr."):
        if info.name in OPTIONAL:
            continue
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001
            failed.append(f"{info.name}: {traceback.format_exc(limit=1).strip().splitlines()[-1]}")
    versions = []
    for name in LEANED_ON:
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            versions.append(f"{name} -")
    print("[gpu_check_env] Python " + sys.version.split()[0] + "; " + ", ".join(versions))
    for f in failed:
        print(f"[gpu_check_env] MISSING {f}", file=sys.stderr)
    print(f"[gpu_check_env] {'FAILED' if failed else 'ok'}: {len(names)} distributions, every ctr module")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
