"""Shared fixtures: tiny random backbones (no hub), small JSONL task files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ctr.core.testing import save_tiny_backbone


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """The training data cache of every test (and of the processes tests launch) is a temporary
    folder, not ~/.cache/ctr/data."""
    old = os.environ.get("CTR_DATA_CACHE")
    os.environ["CTR_DATA_CACHE"] = str(tmp_path_factory.mktemp("data_cache"))
    yield Path(os.environ["CTR_DATA_CACHE"])
    if old is None:
        os.environ.pop("CTR_DATA_CACHE", None)
    else:
        os.environ["CTR_DATA_CACHE"] = old


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


def write_t0_folder(root: Path) -> Path:
    """A small T0-format data folder with the real sample's defects: `<|endoftext|>` markers,
    an empty file, a file of empty targets, a single-answer task, blank lines."""
    files = {
        "alpha_tpl": [(f"Is {w} a word?\n", ("yes" if i % 3 else "no") + "<|endoftext|>")
                      for i, w in enumerate(["cat", "dog", "sun", "tree", "blue", "fish", "rock"])],
        "beta_tpl": [(f"Spell {w} backwards.\n", w[::-1]) for w in ["milk", "cat", "rain", "bird", "glass"]],
        "empty_tpl": [],
        "gamma_tpl": [(f"Question {i}\n", "<|endoftext|>") for i in range(4)],  # all targets empty
        "mono_tpl": [(f"Review: {w} was bad.\n", "negative<|endoftext|>") for w in ["film", "show", "play"]],
        "zeta-b_tpl": [(f"Say {w}.\n", " " + w + " ") for w in ["hi", "yo", "hey", "ok", ""]],
    }
    folder = root / "t0_train"
    folder.mkdir(parents=True)
    rows = ["file\tdataset\ttemplate\ttask_type\texamples\tempty_targets"]
    for k, (name, pairs) in enumerate(files.items()):
        lines = [json.dumps({"prompt": p, "completion": c}) for p, c in pairs]
        if name == "beta_tpl":
            lines.insert(2, "")
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
        rows.append(f"{name}.jsonl\t{name.split('_')[0]}\ttpl\t{['sentiment', 'qa'][k % 2]}\t{len(pairs)}\t0")
    (root / "t0_train_manifest.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def task_file(tmp_path) -> Path:
    return write_tasks(tmp_path / "tasks.jsonl")


@pytest.fixture(scope="session")
def lora_runs(tiny_paths, tmp_path_factory):
    """Real runs of the tiny Llama: stage 1, stage 2 from it with --lora, and the baseline
    (--no-codes --lora), as the demo's releases are made."""
    from ctr.config import TrainConfig
    from ctr.train.trainer import train
    root = tmp_path_factory.mktemp("lora_release")
    tasks = write_tasks(root / "tasks.jsonl")
    common = dict(model=str(tiny_paths["llama"]), preset="tiny", train_files=[str(tasks)],
                  max_source_len=32, max_target_len=8, code_length=3, codebook_size=8)
    s1 = train(TrainConfig.from_flags(output_dir=str(root / "s1"), **common)).parent
    lora = dict(stage=2, lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1)
    s2 = train(TrainConfig.from_flags(output_dir=str(root / "s2"), init_from=str(s1), **lora, **common)).parent
    mt = train(TrainConfig.from_flags(output_dir=str(root / "mt"), no_codes=True, **lora, **common)).parent
    return {"s1": s1, "s2": s2, "mt": mt}
