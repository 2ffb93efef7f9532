"""The GPU call's setup carries every package the project needs that the GPU image lacks
(scripts/gpu_wheels.py, scripts/gpu_wheels.txt), and its environment check names what is
missing (scripts/gpu_check_env.py; the whole call: scripts/gpu_dryrun.sh)."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_carried_wheels_are_every_needed_package_the_image_lacks():
    w = script("gpu_wheels")
    image = w.image_packages()
    assert "torch" in image and "datasets" not in image  # the GPU image has torch, not datasets
    carry, problems = w.needed(image)
    assert problems == []
    assert {"datasets", "dill", "multiprocess", "gguf", "vector-quantize-pytorch"} <= set(carry)
    assert not set(carry) & set(image)
    assert w.unlisted(carry, w.manifest()) == {}, "rerun: python scripts/gpu_wheels.py"


def test_a_package_left_out_or_an_image_too_old_is_named():
    w = script("gpu_wheels")
    carry, _ = w.needed(w.image_packages())
    listed = {n: v for n, v in w.manifest().items() if n != "datasets"}
    assert w.unlisted(carry, listed) == {"datasets": carry["datasets"]}
    old_hub = dict(w.image_packages(), **{"huggingface-hub": "0.20.0"})
    assert any("datasets needs huggingface-hub" in p for p in w.needed(old_hub)[1])


def test_the_environment_check_fails_on_a_missing_package(monkeypatch, capsys):
    check = script("gpu_check_env")
    real = md.distribution

    def without_dill(name):
        if name == "dill":
            raise md.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(check.md, "distribution", without_dill)
    assert check.main() == 1
    assert "MISSING dill: not installed" in capsys.readouterr().err
