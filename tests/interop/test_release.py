"""Releases: a stage-1 model's CTR weights, or a LoRA stage-2 model / baseline's CTR weights and
adapter, without the backbone, loaded by name by every command and refused when a file does
not match its sha256."""
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
    assert info["dtype"] == dtype and info["files"][WEIGHTS_FILE]["bytes"] == (out / WEIGHTS_FILE).stat().st_size
    assert set(info["files"]) == {"ctr_config.json", WEIGHTS_FILE, "code_table.json"}
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
    with pytest.raises(ValueError, match="trained its whole backbone .* train it with --lora"):
        release(tmp_path / "s2", "s2", tmp_path / "releases")
    bare = CTRModel(model.backbone, CTRConfig(use_codes=False, backbone=model.config.backbone), model.tokenizer)
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="bare backbone: there is nothing to release"):
        release(tmp_path / "bare", "bare", tmp_path / "releases")
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
    """The releases under this repository's checkpoints/: every model file as release.json says
    (a truncated copy or a Git LFS pointer fails here), a code table of the model's shape, a
    card and the training run's provenance (command, commit, hardware, date)."""
    from ctr.core.loading import release_roots
    from ctr.core.locate import verify_release
    root = release_roots()[-1]  # the repository's checkpoints/
    folders = [f for f in sorted(root.iterdir()) if (f / "release.json").exists()] if root.is_dir() else []
    if not folders:
        pytest.skip("no release committed")
    for folder in folders:
        meta = json.loads((folder / "release.json").read_text())
        assert meta["name"] == folder.name
        assert {"ctr_config.json", WEIGHTS_FILE, "code_table.json"} <= set(meta["files"]), folder
        for name, entry in meta["files"].items():
            assert (folder / name).stat().st_size == entry["bytes"], (folder, name)
        verify_release(folder)
        config = json.loads((folder / "ctr_config.json").read_text())
        assert not config["backbone_trained"] and not (folder / "backbone").exists()
        table = json.loads((folder / "code_table.json").read_text())
        assert list(table) == (config["task_names"] if config["use_codes"] else [])
        assert all(len(c) == config["code_length"] and 0 <= min(c) and max(c) < config["codebook_size"]
                   for c in table.values())
        if config["lora"]:
            assert {"lora/adapter_config.json", "lora/adapter_model.safetensors"} <= set(meta["files"])
        run = json.loads((folder / "provenance.json").read_text())
        words = run["command"].split()
        assert words[1] == "train" and words[2] in ("--stage", "--mode") and run["time"] and run["hardware"]
        assert run["commit"], folder
        card = (folder / "README.md").read_text()
        assert f"# {folder.name}" in card and "## How it was made" in card


# ---- LoRA stage 2 and the LoRA baseline ------------------------------------------------------
@torch.no_grad()
def fixed_logits(model, codes=True):
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    kw = {"task_ids": torch.tensor([0, 2])} if codes else {}
    return model(input_ids=ids, labels=ids, return_logits=True, target_only=False, **kw).logits


@pytest.fixture()
def releases_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_CHECKPOINTS", str(tmp_path / "releases"))
    return tmp_path / "releases"


@pytest.mark.parametrize("kind", ["s2", "mt"])
def test_a_lora_release_gives_the_logits_of_the_run_it_came_from(lora_runs, releases_dir, kind):
    from safetensors.torch import load_file
    run = lora_runs[kind]
    out = release(run, f"tiny-{kind}", releases_dir)
    info = json.loads((out / "release.json").read_text())
    assert info["kind"].startswith("CTR stage 2" if kind == "s2" else "multi-task prompted baseline")
    assert {"lora/adapter_config.json", "lora/adapter_model.safetensors"} <= set(info["files"])
    # no backbone weights: the adapter holds LoRA matrices only, the CTR weights no backbone.*
    assert not (out / "backbone").exists()
    assert all("lora_A" in k or "lora_B" in k for k in load_file(str(out / "lora" / "adapter_model.safetensors")))
    assert not any(k.startswith("backbone.") for k in load_file(str(out / WEIGHTS_FILE)))
    codes = kind == "s2"
    want = fixed_logits(CTRModel.from_pretrained(run), codes)
    for loaded in (load_model(f"tiny-{kind}"), CTRModel.from_pretrained(f"tiny-{kind}")):  # by name
        assert torch.equal(fixed_logits(loaded, codes), want)
    # the adapter is what makes them equal: the base backbone alone gives other logits
    cfg = CTRModel.from_pretrained(run).config
    cfg.lora = None
    backbone, tok = load_backbone(cfg.backbone)
    plain = CTRModel(backbone, cfg, tok)
    plain.load_state_dict(load_file(str(out / WEIGHTS_FILE)), strict=False)
    assert not torch.allclose(fixed_logits(plain, codes), want)
    card = (out / "README.md").read_text()
    assert "# tiny-" + kind in card and f"CTRModel.from_pretrained('tiny-{kind}')" in card
    # the run recorded where it came from, and the release and its card carry it
    run_prov = json.loads((run / "provenance.json").read_text())
    assert json.loads((out / "provenance.json").read_text()) == run_prov
    assert {"commit", "command", "hardware", "time"} <= set(run_prov) and run_prov["time"][:10] in card


def test_a_bf16_lora_release_keeps_the_codes_and_nearly_the_logits(lora_runs, releases_dir):
    run = lora_runs["s2"]
    out = release(run, "tiny-s2-bf16", releases_dir, dtype="bf16")
    loaded = load_model("tiny-s2-bf16")
    source = CTRModel.from_pretrained(run)
    assert loaded.code_table() == source.code_table()
    torch.testing.assert_close(fixed_logits(loaded), fixed_logits(source), atol=0.05, rtol=0.05)
    from safetensors.torch import load_file
    for f in ("lora/adapter_model.safetensors", WEIGHTS_FILE):  # stored in bf16 (half the size)
        assert {t.dtype for t in load_file(str(out / f)).values() if t.is_floating_point()} == {torch.bfloat16}, f


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_release_whose_files_do_not_match_their_sha256_is_refused_naming_the_file(
        lora_runs, releases_dir, damage, capsys):
    from ctr.cli import main as ctr_main
    out = release(lora_runs["s2"], "tiny-s2", releases_dir)
    adapter = out / "lora" / "adapter_model.safetensors"
    data = adapter.read_bytes()
    if damage == "flip":
        adapter.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        adapter.write_bytes(data[: len(data) // 2])
    else:
        adapter.unlink()
    why = "missing" if damage == "delete" else "sha256 .* does not match"
    for load in (load_model, CTRModel.from_pretrained):
        with pytest.raises(ValueError, match=f"tiny-s2/lora/adapter_model.safetensors: {why}"):
            load("tiny-s2")
    assert ctr_main(["zero-label", "--checkpoint", "tiny-s2", "--tasks", "glue_sst2"]) == 2
    assert "lora/adapter_model.safetensors" in capsys.readouterr().err
    # the other model files are still checked on their own
    adapter.write_bytes(data)
    load_model("tiny-s2")
    (out / "code_table.json").write_text((out / "code_table.json").read_text() + " ")
    with pytest.raises(ValueError, match="code_table.json: sha256"):
        load_model("tiny-s2")


def test_every_command_takes_a_release_by_name(lora_runs, releases_dir, tmp_path, capsys):
    """ctr eval, zero-label, few-shot and export on releases named, not pathed (real data)."""
    from ctr.cli import main as ctr_main
    from ctr.tasks.mixture import data_dir
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"data not available: {e}")
    for kind in ("s1", "s2", "mt"):
        release(lora_runs[kind], f"tiny-{kind}", releases_dir)
    scope = ["--tasks", "super_glue_cb", "--max-examples", "4"]
    assert ctr_main(["eval", "--model", "tiny-mt", *scope, "--max-templates", "1",
                 "--output-dir", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["model"]["use_codes"] is False
    assert ctr_main(["zero-label", "--checkpoint", "tiny-s2", *scope, "--n-inputs", "3", "--max-templates", "1",
                 "--eval-max-templates", "1", "--output-dir", str(tmp_path / "zl")]) == 0
    zl = json.loads((tmp_path / "zl" / "zero_label.json").read_text())["tasks"]["super_glue_cb"]
    assert zl["from_tasks"][0] in ("task0", "task1", "task2")
    assert ctr_main(["few-shot", "--checkpoint", "tiny-s2", *scope, "--shots", "3", "--max-templates", "1",
                 "--max-sweeps", "1", "--values", "seen", "--eval-max-templates", "1",
                 "--output-dir", str(tmp_path / "fs")]) == 0
    assert "super_glue_cb" in json.loads((tmp_path / "fs" / "results.json").read_text())["adapted"]
    assert ctr_main(["export", "tiny-s1", "--task", "task1", "--format", "peft",
                 "--output", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "adapter_config.json").is_file()


def test_an_unknown_release_name_lists_the_releases(lora_runs, releases_dir, capsys, monkeypatch):
    from ctr.cli import main as ctr_main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # eval --model also tries the name as a hub id
    release(lora_runs["s2"], "tiny-s2", releases_dir)
    for argv in (["zero-label", "--checkpoint", "no-such-release"],
                 ["few-shot", "--checkpoint", "no-such-release"],
                 ["eval", "--model", "no-such-release"]):
        assert ctr_main(argv) == 2
        err = capsys.readouterr().err
        assert "no-such-release" in err and "released: " in err and "tiny-s2" in err, err
        assert "--model" not in err or argv[0] == "eval"
    with pytest.raises(FileNotFoundError, match="released: .*tiny-s2"):
        CTRModel.from_pretrained("no-such-release")


def test_a_lora_stage2_release_exports_a_prompt_adapter_with_its_lora_adapter(lora_runs, releases_dir, tmp_path):
    """`ctr export NAME` of a LoRA stage-2 release: the prompt-tuning adapter of the code plus the
    LoRA adapter the code was trained with; loaded as the export's card says (merge the LoRA
    adapter into the base, then the prompt adapter), PEFT gives CTR's logits."""
    import peft
    from transformers import AutoModelForCausalLM
    from ctr.cli import main as ctr_main
    release(lora_runs["s2"], "tiny-s2", releases_dir)
    out = tmp_path / "export"
    assert ctr_main(["export", "tiny-s2", "--task", "task1", "--format", "peft", "--output", str(out)]) == 0
    info = json.loads((out / "ctr_export.json").read_text())
    assert info["lora_adapter"] == "lora" and (out / "lora" / "adapter_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "merge_and_unload()" in card
    base = AutoModelForCausalLM.from_pretrained(info["base_model_name_or_path"])
    base = peft.PeftModel.from_pretrained(base, str(out / "lora")).merge_and_unload()
    pm = peft.PeftModel.from_pretrained(base, str(out)).eval()
    model = load_model("tiny-s2").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = model(ids, codes=torch.tensor([info["code"]]), return_logits=True, target_only=False).logits
        got = pm(input_ids=ids).logits[:, model.config.code_length:]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # without the LoRA adapter the prompt alone is not the model
    bare = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(info["base_model_name_or_path"]),
                                          str(out)).eval()
    with torch.no_grad():
        assert not torch.allclose(bare(input_ids=ids).logits[:, model.config.code_length:], want, atol=1e-4)
