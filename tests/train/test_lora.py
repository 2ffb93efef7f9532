"""Stage 2 with LoRA (`ctr train --stage 2 --lora`): only the adapter and the CTR module
train, the saved adapter reloads to the same logits, a killed run resumes exactly."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from ctr.train import trainer
from ctr.cli import build_parser, dataclass_from_args
from ctr.config import TrainConfig
from ctr.core.backbone import load_backbone
from ctr.core.loading import load_model
from ctr.core.lora import LORA_DIR, default_target_modules, is_lora_parameter, merge_lora
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone
from ctr.train.trainer import train

ADAPTER = "adapter_model.safetensors"


def cfg_for(paths, task_file, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(paths["llama"]), preset="tiny",
                train_files=[str(task_file)], max_source_len=32, max_target_len=8,
                code_length=3, codebook_size=8, save_every=2)
    base.update(kw)
    return TrainConfig.from_flags(**base)


def lora_cfg(paths, task_file, stage1, out, **kw) -> TrainConfig:
    return cfg_for(paths, task_file, out, stage=2, init_from=str(stage1), lora=True, lora_r=4,
                   lora_alpha=8, lora_dropout=0.1, **kw)


@pytest.fixture(scope="module")
def runs(tiny_paths, tmp_path_factory):
    """Stage 1, then a LoRA stage 2 whose in-memory model is kept (make_optimizer sees it)."""
    from conftest import write_tasks
    root = tmp_path_factory.mktemp("lora")
    task_file = write_tasks(root / "tasks.jsonl")
    stage1 = train(cfg_for(tiny_paths, task_file, root / "s1"))
    seen = {}
    make = trainer.make_optimizer

    def capture(model, cfg, *args):
        seen["model"] = model
        return make(model, cfg, *args)
    trainer.make_optimizer = capture
    try:
        final = train(lora_cfg(tiny_paths, task_file, stage1, root / "s2"))
    finally:
        trainer.make_optimizer = make
    return task_file, stage1, final, seen["model"]


def batch(model: CTRModel) -> dict[str, torch.Tensor]:
    tok = model.tokenizer
    enc = tok(["word: cat\nCAT", "word: sun"], return_tensors="pt", padding=True)
    return dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                task_ids=torch.tensor([0, 2]))


@torch.no_grad()
def logits(model: CTRModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(input embeddings with the soft prompt, LM logits) on a fixed batch, in eval mode."""
    b = batch(model.eval())
    out = model(**b, labels=b["input_ids"], return_logits=True, target_only=False)
    return model.embed_inputs(**b).embeds, out.logits


def test_only_the_adapter_and_the_ctr_module_train(tiny_paths, runs):
    _, stage1, final, model = runs
    original, _ = load_backbone(str(tiny_paths["llama"]))
    base = {n.replace(".base_layer", ""): p for n, p in model.backbone.named_parameters()
            if not is_lora_parameter(n)}
    assert base.keys() == dict(original.named_parameters()).keys()
    for name, p in original.named_parameters():  # bit-identical after training
        assert torch.equal(base[name], p), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if not n.startswith("backbone.") or is_lora_parameter(n)}
    assert any("lora_B" in n for n in trainable)
    lora_b = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # the adapter moved off its zero init
    before = load_file(str(stage1 / "ctr_weights.safetensors"))
    after = load_file(str(final / "ctr_weights.safetensors"))
    assert not torch.equal(before["decoder.weight"], after["decoder.weight"])
    # the folder: CTR files + the adapter in PEFT's format, no copy of the base weights
    assert (final / LORA_DIR / ADAPTER).is_file() and not (final / "backbone").exists()
    assert "LoRA adapters trained (the adapter is in lora/" in (final / "README.md").read_text()
    assert model.config.lora == {"r": 4, "alpha": 8, "dropout": 0.1,
                                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def test_a_lora_checkpoint_reloads_to_the_same_logits(tiny_paths, runs):
    _, _, final, model = runs
    for path in (final, final.parent):  # final/ itself and the run folder (ctr eval --model RUN)
        loaded = load_model(str(path))
        assert loaded.config.lora == model.config.lora
        (e1, l1), (e2, l2) = logits(model), logits(loaded)
        assert torch.equal(e1, e2) and torch.equal(l1, l2)
    # the adapter folder is PEFT's own format
    from peft import PeftModel
    base, _ = load_backbone(str(tiny_paths["llama"]))
    peft_model = PeftModel.from_pretrained(base, str(final / LORA_DIR))
    names = {n for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert len(names) == 2 * 4  # 2 layers x q k v o


def test_merging_keeps_the_function_and_saves_a_full_backbone(runs, tmp_path):
    _, _, final, _ = runs
    model = CTRModel.from_pretrained(final)
    _, before = logits(model)
    merge_lora(model)
    assert model.config.lora is None and model.config.backbone_trained
    assert not any(is_lora_parameter(n) for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model)[1], before, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "backbone").is_dir() and not (tmp_path / "merged" / LORA_DIR).exists()
    torch.testing.assert_close(logits(CTRModel.from_pretrained(tmp_path / "merged"))[1], before,
                               atol=1e-5, rtol=1e-5)


def test_a_killed_lora_run_resumes_to_the_same_weights(tiny_paths, runs, tmp_path):
    task_file, stage1, final, _ = runs
    cut = tmp_path / "cut"
    train(lora_cfg(tiny_paths, task_file, stage1, cut), stop_after=3)  # checkpoint 2 on disk
    damaged = shutil.copytree(cut, tmp_path / "damaged")
    shutil.rmtree(damaged / "checkpoint-0000002" / "model" / LORA_DIR)
    assert trainer.latest_checkpoint(damaged) is None  # a checkpoint without its adapter
    resumed = train(lora_cfg(tiny_paths, task_file, stage1, cut, resume=True))
    for name in ("ctr_weights.safetensors", f"{LORA_DIR}/{ADAPTER}"):
        a, b = load_file(str(final / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    with pytest.raises(ValueError, match="--lora-r 8 .checkpoint: 4"):
        train(cfg_for(tiny_paths, task_file, cut, stage=2, init_from=str(stage1), lora=True,
                      lora_r=8, lora_alpha=8, lora_dropout=0.1, resume=True, steps=8))


def test_default_targets_are_the_attention_projections():
    assert default_target_modules(tiny_backbone("llama")[0]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert default_target_modules(tiny_backbone("t5")[0]) == ["q", "k", "v", "o"]


def test_lora_flags_and_their_checks():
    args = build_parser().parse_args(["train", "--stage", "2", "--init-from", "x", "--lora",
                                      "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0",
                                      "--lora-target-modules", "q_proj", "v_proj"])
    cfg = dataclass_from_args(TrainConfig, args)
    assert (cfg.lora, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules) == \
        (True, 4, 8, 0.0, ["q_proj", "v_proj"])
    with pytest.raises(ValueError, match="--lora .* --stage 2"):
        TrainConfig.from_flags(lora=True)
    with pytest.raises(ValueError, match="--lora-r"):
        TrainConfig.from_flags(stage=2, init_from="x", lora=True, lora_r=0)



def test_eval_zero_label_and_few_shot_take_a_lora_run(runs, tmp_path):
    """The commands load the run through ctr.core.loading.load_model (base + adapter)."""
    from ctr.tasks.mixture import data_dir
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"held-out data not available: {e}")
    from ctr.cli import main
    run = str(runs[2].parent)
    assert main(["zero-label", "--checkpoint", run, "--tasks", "super_glue_rte", "--n-inputs", "4",
                 "--max-templates", "1", "--max-examples", "4", "--output-dir", str(tmp_path / "zl")]) == 0
    assert main(["eval", "--model", run, "--tasks", "super_glue_rte", "--max-examples", "4",
                 "--max-templates", "1", "--codes-file", str(tmp_path / "zl" / "codes.json"),
                 "--output-dir", str(tmp_path / "ev")]) == 0
    assert main(["few-shot", "--checkpoint", run, "--tasks", "super_glue_cb", "--shots", "4",
                 "--max-templates", "1", "--max-sweeps", "1", "--max-examples", "4",
                 "--eval-max-templates", "1", "--output-dir", str(tmp_path / "fs")]) == 0
    assert (tmp_path / "ev" / "results.json").exists() and (tmp_path / "fs" / "codes.json").exists()
