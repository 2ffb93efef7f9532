"""Shared fixtures: tiny random backbones (no hub), small JSONL task files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr.core.testing import save_tiny_backbone


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {arch: save_tiny_backbone(root / arch, arch) for arch in ("llama", "t5")}


def write_tasks(path: Path, n_tasks: int = 3, n_examples: int = 6) -> Path:
    """Small user-format task file: task i maps a word to a fixed transform."""
    words = ["cat", "dog", "sun", "tree", "blue", "fish", "rock", "milk"]
    with open(path, "w") as f:
        for t in range(n_tasks):
            for i in range(n_examples):
                w = words[(i + t) % len(words)]
                target = [w.upper(), w[::-1], w + w][t % 3]
                f.write(json.dumps({"task": f"task{t}", "input": f"word: {w}", "target": target}) + "\n")
    return path


@pytest.fixture
def task_file(tmp_path) -> Path:
    return write_tasks(tmp_path / "tasks.jsonl")
