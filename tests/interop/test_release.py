"""Released codebooks: a stage-1 model's CTR weights without the backbone, loaded by name."""
from __future__ import annotations

import json

import pytest
import torch

from ctr.config import CTRConfig
from ctr.core.backbone import load_backbone
from ctr.core.loading import load_model, releases, require_model_dir
from ctr.core.model import CTRModel, WEIGHTS_FILE
from ctr.core.testing import save_tiny_backbone
from ctr.interop.release import main, release


@pytest.fixture()
def stage1_run(tmp_path, monkeypatch):
    """A frozen-backbone run folder whose config names its backbone by path; releases go to
    tmp/releases, found through $CTR_CHECKPOINTS."""
    path = save_tiny_backbone(tmp_path / "backbone", "llama")
    backbone, tok = load_backbone(str(path))
    torch.manual_seed(0)
    model = CTRModel(backbone, CTRConfig(code_length=3, codebook_size=8, task_names=["a", "b", "c"],
                                         backbone=str(path)), tok)
    run = tmp_path / "run"
    model.save_pretrained(run / "final")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    (run / "train_config.json").write_text(json.dumps({"stage": 1}))
    monkeypatch.setenv("CTR_CHECKPOINTS", str(tmp_path / "releases"))
    return run, model


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_release_loads_by_name_with_the_runs_codes(stage1_run, tmp_path, dtype):
    run, model = stage1_run
    out = release(run, "tiny-s1", tmp_path / "releases", dtype)
    assert not (out / "backbone").exists()
    for f in ("ctr_config.json", "code_table.json", "README.md", "metrics.jsonl", "train_config.json"):
        assert (out / f).exists(), f
    info = json.loads((out / "release.json").read_text())
    assert info["dtype"] == dtype and info["weights_bytes"] == (out / WEIGHTS_FILE).stat().st_size
    assert "tiny-s1" in releases()
    assert require_model_dir("tiny-s1") == out
    loaded = load_model("tiny-s1")
    assert loaded.code_table() == model.code_table()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        a = model(input_ids=ids, task_ids=torch.tensor([1]), labels=ids).loss
        b = loaded(input_ids=ids, task_ids=torch.tensor([1]), labels=ids).loss
    tol = 0 if dtype == "fp32" else 0.05
    assert abs(float(a) - float(b)) <= tol


def test_release_refuses_what_it_cannot_release(stage1_run, tmp_path):
    run, model = stage1_run
    with pytest.raises(ValueError, match="one plain folder name"):
        release(run, "a/b", tmp_path / "releases")
    model.save_pretrained(tmp_path / "s2" / "final", save_backbone=True)
    with pytest.raises(ValueError, match="stage 2"):
        release(tmp_path / "s2", "s2", tmp_path / "releases")
    release(run, "once", tmp_path / "releases")
    with pytest.raises(FileExistsError, match="--force"):
        release(run, "once", tmp_path / "releases")
    release(run, "once", tmp_path / "releases", force=True)
    with pytest.raises(FileNotFoundError, match="released: once"):
        require_model_dir("no-such-release")


def test_release_cli_names_the_checkpoint_flag(stage1_run, tmp_path, capsys):
    run, _ = stage1_run
    main([str(run), "cli-s1", "--dest", str(tmp_path / "releases"), "--dtype", "bf16"])
    assert "--checkpoint cli-s1" in capsys.readouterr().out
    assert load_model("cli-s1").config.task_names == ["a", "b", "c"]


def test_a_release_whose_weights_give_other_codes_is_refused(stage1_run, tmp_path):
    run, model = stage1_run
    table = json.loads((run / "final" / "code_table.json").read_text())
    table["b"] = [(v + 1) % 8 for v in table["b"]]  # as if rounding had moved task b
    (run / "final" / "code_table.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match=r"change the code of 1 task\(s\) \(b\)"):
        release(run, "moved", tmp_path / "releases")
    assert not (tmp_path / "releases" / "moved").exists()  # nothing half-written


def test_every_committed_release_is_intact():
    """The releases under this repository's checkpoints/: weights as release.json says (a
    truncated copy or a Git LFS pointer fails here), and a code table of the model's shape."""
    from ctr.core.loading import release_roots
    from ctr.interop.release import sha256
    root = release_roots()[-1]  # the repository's checkpoints/
    folders = [f for f in sorted(root.iterdir()) if (f / "release.json").exists()] if root.is_dir() else []
    if not folders:
        pytest.skip("no release committed")
    for folder in folders:
        meta = json.loads((folder / "release.json").read_text())
        weights = folder / WEIGHTS_FILE
        assert meta["name"] == folder.name
        assert weights.stat().st_size == meta["weights_bytes"], folder
        assert sha256(weights) == meta["weights_sha256"], folder
        config = json.loads((folder / "ctr_config.json").read_text())
        table = json.loads((folder / "code_table.json").read_text())
        assert list(table) == config["task_names"]
        assert all(len(c) == config["code_length"] and 0 <= min(c) and max(c) < config["codebook_size"]
                   for c in table.values())
