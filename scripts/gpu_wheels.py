"""The wheels a lent GPU machine needs beyond its image, for CPython 3.12 on manylinux x86_64.

    python scripts/gpu_wheels.py [--dest .whl] [--twins .whl_here] [--check-only]

A script, not a module of the package, like gpu_check_env.py and gpu_image_view.py that
use it: they prepare and check an environment in which `ctr` cannot be imported yet.

The dependencies of pyproject.toml and theirs, at the versions pip resolved for this
environment, minus the packages of the GPU image (scripts/gpu_image.txt, not descended
into: the image holds their own needs), each downloaded with `pip download --no-deps` for
cp312 manylinux x86_64 into DEST. A carried package's requirement on an image package whose
version is known there is checked. scripts/gpu_wheels.txt is the list (name==version) that
tests/test_gpu_wheels.py holds against the dependencies; --check-only compares only.
--twins also fetches, for each wheel that is not pure Python, the same version for this
interpreter: what the CPU dry run installs in its place (scripts/gpu_dryrun.sh).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "scripts" / "gpu_image.txt"
MANIFEST = ROOT / "scripts" / "gpu_wheels.txt"
GPU_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PLATFORMS = ["manylinux_2_39_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: Path = IMAGE) -> dict[str, str | None]:
    """{normalised name: version or None} of the GPU image."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[norm(name)] = version or None
    return out


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]


def needed(image: dict[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """({name: version installed here} of every distribution to carry, problems): the
    project's requirements and theirs (as on the GPU's Python), image packages left out."""
    carry: dict[str, str] = {}
    problems: list[str] = []
    todo = [(r, "pyproject.toml") for r in project_requirements()]
    while todo:
        req, by = todo.pop()
        if req.marker and not req.marker.evaluate(GPU_PYTHON):
            continue
        name = norm(req.name)
        if name in image:
            known = image[name]
            if known and not req.specifier.contains(Version(known), prereleases=True):
                problems.append(f"{by} needs {req}, the GPU image has {name} {known}")
            continue
        if name in carry:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{by} needs {req}, which is not installed here (pip install it, then rerun)")
            continue
        carry[name] = dist.version
        todo += [(Requirement(r), name) for r in dist.requires or []]
    return dict(sorted(carry.items())), problems


def manifest(path: Path = MANIFEST) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = [line.split("==") for line in path.read_text().split("\n") if line and not line.startswith("#")]
    return {norm(n): v for n, v in pairs}


def unlisted(carry: dict[str, str], listed: dict[str, str]) -> dict[str, str]:
    """The needed distributions the list lacks or has at another version."""
    return {n: v for n, v in carry.items() if listed.get(n) != v}


def pip_download(specs: list[str], dest: Path, gpu: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    if gpu:
        cmd += ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
        cmd += [f"--platform={p}" for p in PLATFORMS]
    subprocess.run(cmd + specs, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", default=str(ROOT / ".whl"))
    ap.add_argument("--twins", default=None, help="folder for this interpreter's copies of the non-pure wheels")
    ap.add_argument("--check-only", action="store_true", help="compare the wheel list (--list) only")
    ap.add_argument("--image", default=str(IMAGE), help="the GPU image's packages (name==version lines)")
    ap.add_argument("--list", default=str(MANIFEST), help="the wheel list --check-only compares")
    args = ap.parse_args(argv)
    carry, problems = needed(image_packages(Path(args.image)))
    for p in problems:
        print(f"[gpu_wheels] {p}", file=sys.stderr)
    listed = manifest(Path(args.list))
    if args.check_only:
        missing = unlisted(carry, listed)
        for n, v in missing.items():
            print(f"[gpu_wheels] {n}=={v} is needed but {args.list} has {listed.get(n)}", file=sys.stderr)
        print(f"[gpu_wheels] {'FAILED' if missing or problems else 'ok'}: carried {', '.join(carry)}")
        return 1 if missing or problems else 0
    if problems:
        return 1
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two would stop the install
        old.unlink()
    pip_download([f"{n}=={v}" for n, v in carry.items()], dest, gpu=True)
    MANIFEST.write_text("# written by scripts/gpu_wheels.py: what the GPU machine gets as wheels\n"
                        + "".join(f"{n}=={v}\n" for n, v in carry.items()))
    if args.twins:
        twins = Path(args.twins)
        twins.mkdir(parents=True, exist_ok=True)
        for old in twins.glob("*.whl"):
            old.unlink()
        binary = [w for w in dest.glob("*.whl") if not w.name.endswith(("-py3-none-any.whl", "-py2.py3-none-any.whl"))]
        names = {norm(w.name.split("-")[0]) for w in binary}
        if names:
            pip_download([f"{n}=={carry[n]}" for n in sorted(names)], twins, gpu=False)
    size = sum(w.stat().st_size for w in dest.glob("*.whl")) / 2 ** 20
    print(f"[gpu_wheels] {len(carry)} wheels in {dest} ({size:.1f} MiB): {', '.join(carry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
