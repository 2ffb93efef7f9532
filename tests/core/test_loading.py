"""ctr.core.loading: every command accepts a run folder, a checkpoint or a model folder."""
from __future__ import annotations

import json

import pytest
import torch

from ctr.config import CTRConfig
from ctr.core.loading import find_model_dir, load_code_table, load_model, require_model_dir
from ctr.core.model import CODE_TABLE_FILE, CTRModel
from ctr.core.testing import tiny_backbone


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder laid out as the trainer writes it: final/ and checkpoint-2/model/."""
    backbone, tok = tiny_backbone("llama")
    model = CTRModel(backbone, CTRConfig(code_length=3, codebook_size=8, task_names=["a", "b"]), tok)
    run = tmp_path_factory.mktemp("run")
    model.save_pretrained(run / "final", save_backbone=True)
    model.save_pretrained(run / "checkpoint-2" / "model", save_backbone=True)
    return run, model


def test_the_three_kinds_of_path_find_the_same_kind_of_folder(run_folder, tmp_path):
    run, _ = run_folder
    assert find_model_dir(run) == run / "final"
    assert find_model_dir(run / "checkpoint-2") == run / "checkpoint-2" / "model"
    assert find_model_dir(run / "final") == run / "final"
    assert find_model_dir(tmp_path) is None
    with pytest.raises(FileNotFoundError, match=f"--init-from {tmp_path}: not a CTR checkpoint"):
        require_model_dir(tmp_path, "--init-from")


def test_a_run_folder_mid_swap_is_found_through_its_backup(run_folder, tmp_path):
    """atomic_dir swaps final/ through a backup; a crash between the two renames leaves only
    the backup, which must still be found (not an older checkpoint)."""
    import shutil

    from ctr.fileio import backup_path
    run, _ = run_folder
    copy = tmp_path / "run"
    shutil.copytree(run / "final", backup_path(copy / "final"))
    assert find_model_dir(copy) == backup_path(copy / "final")


def test_load_model_loads_a_checkpoint_with_its_codes(run_folder):
    run, model = run_folder
    loaded = load_model(str(run))
    assert loaded.config.use_codes and loaded.code_table() == model.code_table()
    codes = torch.tensor([[1, 2, 3]])
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        a = model.eval()(input_ids=ids, codes=codes).logits
        b = loaded.eval()(input_ids=ids.to(loaded.encoder.device), codes=codes).logits.cpu()
    torch.testing.assert_close(a, b)


def test_load_model_wraps_a_bare_backbone_without_codes_and_rejects_other_folders(tmp_path):
    from ctr.core.testing import save_tiny_backbone
    bare = load_model(str(save_tiny_backbone(tmp_path / "hf", "t5")))
    assert not bare.config.use_codes and bare.seq2seq
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--model .*empty: neither a CTR checkpoint"):
        load_model(str(tmp_path / "empty"), "--model")


def test_load_code_table_reads_the_json_without_a_backbone_and_falls_back(run_folder, tmp_path):
    import shutil
    run, model = run_folder
    table, config, folder = load_code_table(run)
    assert table == model.code_table() and folder == run / "final" and config["code_length"] == 3
    old = tmp_path / "old"
    shutil.copytree(run / "final", old)
    (old / CODE_TABLE_FILE).unlink()  # an older folder: the table is computed from the weights
    assert load_code_table(old)[0] == model.code_table()
    cfg = json.loads((old / "ctr_config.json").read_text())
    (old / "ctr_config.json").write_text(json.dumps(dict(cfg, use_codes=False)))
    with pytest.raises(ValueError, match="has no codes"):
        load_code_table(old)


def test_from_pretrained_takes_what_every_command_takes(run_folder, tmp_path):
    """CTRModel.from_pretrained accepts a run folder (its final/) and a checkpoint (its model/)
    as the commands do, not only the model folder; anything else names what it looked for."""
    run, model = run_folder
    ids, codes = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        want = model.eval()(input_ids=ids, codes=codes, labels=ids, return_logits=True).logits
        for path in (run, str(run), run / "checkpoint-2", run / "final"):
            got = CTRModel.from_pretrained(path).eval()(input_ids=ids, codes=codes, labels=ids,
                                                          return_logits=True).logits
            torch.testing.assert_close(got, want)
    with pytest.raises(FileNotFoundError, match=r"CTRModel.from_pretrained: .*empty: not a CTR checkpoint"):
        (tmp_path / "empty").mkdir()
        CTRModel.from_pretrained(tmp_path / "empty")
