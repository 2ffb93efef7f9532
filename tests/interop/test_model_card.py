"""The model card that CTRModel.save_pretrained writes: what it says, and that it never
fails a save."""
from __future__ import annotations

import pytest
import torch

import ctr.core.model_card as card_module
from ctr.config import CTRConfig
from ctr.core.codes import code_usage
from ctr.core.model import CONFIG_FILE, WEIGHTS_FILE, CTRModel
from ctr.core.model_card import CARD_FILE, CardInfo
from ctr.core.testing import tiny_backbone
from ctr.fileio import atomic_dir
from ctr.provenance import command_as


def tiny(arch: str = "llama", **kw) -> CTRModel:
    backbone, tok = tiny_backbone(arch)
    torch.manual_seed(0)
    return CTRModel(backbone, CTRConfig(task_names=["rte_a", "copa_b", "sum_c"], code_length=3,
                                        codebook_size=8, backbone="tiny-" + arch, **kw), tok)


def test_card_describes_backbone_stage_tasks_codes_metrics_command_and_usage(tmp_path):
    model = tiny()
    info = CardInfo(metrics={"loss": 1.234567891, "step": 40},
                    task_types={"rte_a": "nli", "copa_b": "commonsense", "sum_c": "summarization"})
    with command_as(["ctr", "train", "--stage", "1", "--output-dir", "runs/x"]):
        model.save_pretrained(tmp_path / "m", card=info)
    text = (tmp_path / "m" / CARD_FILE).read_text()
    assert "# CTR model on tiny-llama" in text
    assert "decoder-only, llama, hidden size 32" in text
    assert "| stage | 1: codes trained, backbone frozen" in text
    assert "| nli | 1 |" in text and "| summarization | 1 |" in text
    usage = code_usage(torch.tensor(list(model.code_table().values())), 8)
    assert "| perplexity | " + " | ".join(f"{p:.2f}" for p in usage["perplexity"]) + " |" in text
    assert "| values in use | " + " | ".join(map(str, usage["codes_in_use"])) + " |" in text
    for name, code in model.code_table().items():
        assert f"| `{name}` | {info.task_types[name]} | {' '.join(map(str, code))} |" in text
    assert "| loss | 1.23457 |" in text and "| step | 40 |" in text
    assert "ctr train --stage 1 --output-dir runs/x" in text
    assert f"CTRModel.from_pretrained({str(tmp_path / 'm')!r})" in text
    assert f"ctr export {tmp_path / 'm'} --task rte_a --format peft" in text
    assert "python -m ctr.interop.lm_eval_model --model ctr" in text


def test_card_of_a_seq2seq_stage2_model_without_extras(tmp_path):
    model = tiny("t5")
    model.save_pretrained(tmp_path / "m", save_backbone=True)
    text = (tmp_path / "m" / CARD_FILE).read_text()
    assert "seq2seq (encoder-decoder), t5" in text and "in front of the encoder input" in text
    assert "| stage | 2: codes and backbone trained" in text
    assert "Task types were not recorded" in text
    assert "Final metrics" not in text


def test_card_of_a_model_without_codes(tmp_path):
    backbone, tok = tiny_backbone("llama")
    CTRModel(backbone, CTRConfig(use_codes=False, backbone="tiny"), tok).save_pretrained(
        tmp_path / "m", save_backbone=True)
    text = (tmp_path / "m" / CARD_FILE).read_text()
    assert "multi-task prompted baseline" in text and "Code table" not in text
    assert f"ctr eval --model {tmp_path / 'm'}" in text


def test_a_checkpoint_card_names_the_final_folder_not_the_temporary_one(tmp_path):
    """save_checkpoint saves the model inside atomic_dir's hidden temporary folder."""
    with atomic_dir(tmp_path / "checkpoint-0000002") as tmp:
        tiny().save_pretrained(tmp / "model")
    text = (tmp_path / "checkpoint-0000002" / "model" / CARD_FILE).read_text()
    assert f"from_pretrained({str(tmp_path / 'checkpoint-0000002' / 'model')!r})" in text
    assert ".tmp-" not in text


def test_a_failing_section_or_card_never_fails_the_save(tmp_path, monkeypatch):
    model = tiny()
    monkeypatch.setattr(card_module, "_metrics", lambda info: 1 / 0)
    model.save_pretrained(tmp_path / "a", card=CardInfo(metrics={"loss": 1.0}))
    text = (tmp_path / "a" / CARD_FILE).read_text()
    assert "this section could not be written: ZeroDivisionError" in text and "## Code table" in text

    def broken(*args, **kwargs):
        raise RuntimeError("no card today")
    monkeypatch.setattr(card_module, "model_card", broken)
    with pytest.warns(UserWarning, match="model card not written: RuntimeError: no card today"):
        model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / CONFIG_FILE).exists() and (tmp_path / "b" / WEIGHTS_FILE).exists()
    assert not (tmp_path / "b" / CARD_FILE).exists()
    assert CTRModel.from_pretrained(tmp_path / "b", *tiny_backbone("llama")).code_table() == model.code_table()
