"""The GPU call's setup carries every package the project needs that the GPU image lacks
(scripts/gpu_wheels.py, scripts/gpu_wheels.txt), and its environment check names what is
missing (scripts/gpu_check_env.py; the whole call: scripts/gpu_dryrun.sh). Both are run as
the commands they are."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def lines(path: Path) -> dict[str, str]:
    pairs = [x.split("#")[0].strip().partition("==") for x in path.read_text().splitlines()]
    return {name.lower(): version for name, _, version in pairs if name}


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "gpu_wheels.py"), "--check-only", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_the_carried_wheels_are_every_needed_package_the_image_lacks():
    p = check()
    assert p.returncode == 0, "rerun: python scripts/gpu_wheels.py\n" + p.stderr
    carried, image = lines(SCRIPTS / "gpu_wheels.txt"), lines(SCRIPTS / "gpu_image.txt")
    assert "torch" in image and "datasets" not in image  # the GPU image has torch, not datasets
    assert {"datasets", "dill", "multiprocess", "gguf", "vector-quantize-pytorch"} <= set(carried)
    assert not set(carried) & set(image)


def test_a_package_left_out_or_an_image_too_old_is_named(tmp_path):
    full = (SCRIPTS / "gpu_wheels.txt").read_text().splitlines()
    (tmp_path / "list.txt").write_text("\n".join(x for x in full if not x.startswith("datasets==")) + "\n")
    p = check("--list", str(tmp_path / "list.txt"))
    assert p.returncode == 1 and "datasets==" in p.stderr and "is needed but" in p.stderr
    image = (SCRIPTS / "gpu_image.txt").read_text().splitlines()
    old = [x for x in image if not x.lower().startswith("huggingface-hub")] + ["huggingface-hub==0.20.0"]
    (tmp_path / "image.txt").write_text("\n".join(old) + "\n")
    p = check("--image", str(tmp_path / "image.txt"))
    assert p.returncode == 1 and "datasets needs huggingface-hub" in p.stderr


HIDE_DILL = """
import importlib.metadata as md, runpy, sys
real = md.distribution
def without_dill(name):
    if name == "dill":
        raise md.PackageNotFoundError(name)
    return real(name)
md.distribution = without_dill
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_environment_check_fails_on_a_missing_package():
    script = str(SCRIPTS / "gpu_check_env.py")
    ok = subprocess.run([sys.executable, script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ok.returncode == 0 and "[gpu_check_env] ok" in ok.stdout, ok.stderr[-2000:]
    p = subprocess.run([sys.executable, "-c", HIDE_DILL, script], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr[-2000:]
    assert "MISSING dill: not installed" in p.stderr
