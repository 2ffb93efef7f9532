"""`ctr eval` on tiny models with the real held-out data (skipped without the data)."""
from __future__ import annotations

import json

import pytest

from ctr.cli import main
from ctr.config import CTRConfig
from ctr.data import data_dir
from ctr.evaluate import EvalConfig, evaluate, load_for_eval, markdown_table
from ctr.modeling import CTRModel
from ctr.testing import tiny_backbone


@pytest.fixture(autouse=True)
def need_data():
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"held-out data not available: {e}")


def test_bare_backbone_eval_structure_and_table(tiny_paths):
    model = load_for_eval(str(tiny_paths["llama"]))
    assert not model.config.use_codes
    cfg = EvalConfig(tasks=["super_glue_rte", "super_glue_copa"], max_examples=6, batch_size=4)
    res = evaluate(model, cfg, progress=False)
    rte = res["tasks"]["super_glue_rte"]
    assert rte["examples"] == 6 and len(rte["templates"]) == 10
    accs = [t["accuracy"] for t in rte["templates"].values()]
    assert all(0 <= a <= 100 for a in accs)
    assert rte["median"] == pytest.approx(sorted(accs)[4] / 2 + sorted(accs)[5] / 2)
    copa = res["tasks"]["super_glue_copa"]
    assert sum(1 for t in copa["templates"].values() if t["n"]) >= 8  # cause/effect-only ones may be empty
    assert res["average_of_medians"] == pytest.approx((rte["median"] + copa["median"]) / 2, abs=0.01)
    table = markdown_table(res, res)
    assert "80.5" in table and "92.0" in table  # the paper's reference column
    assert res["model"]["sha256"] and res["hardware"]["threads"] >= 1


def test_subsample_is_seeded_and_exclusions_hold(tiny_paths, tmp_path):
    model = load_for_eval(str(tiny_paths["llama"]))
    excl = tmp_path / "sel.json"
    excl.write_text(json.dumps({"super_glue_cb": list(range(0, 56, 2))}))
    cfg = EvalConfig(tasks=["super_glue_cb"], templates=["GPT-3 style"], exclude_indices=str(excl))
    res = evaluate(model, cfg, progress=False)
    assert res["tasks"]["super_glue_cb"]["examples"] == 28
    a = evaluate(model, EvalConfig(tasks=["super_glue_cb"], templates=["GPT-3 style"], max_examples=10,
                                   seed=1), progress=False)
    b = evaluate(model, EvalConfig(tasks=["super_glue_cb"], templates=["GPT-3 style"], max_examples=10,
                                   seed=1), progress=False)
    assert a["tasks"] == b["tasks"]


def test_ctr_model_needs_codes_and_checks_them(tiny_paths):
    backbone, tok = tiny_backbone("llama")
    model = CTRModel(backbone, CTRConfig(code_length=3, codebook_size=8, task_names=["x"]), tok)
    with pytest.raises(ValueError, match="--code or --codes-file"):
        evaluate(model, EvalConfig(tasks=["super_glue_cb"], max_examples=2), progress=False)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        evaluate(model, EvalConfig(tasks=["super_glue_cb"], code="1,2,9"), progress=False)
    res = evaluate(model, EvalConfig(tasks=["super_glue_cb"], code="1,2,3", max_examples=4,
                                     templates=["GPT-3 style"]), progress=False)
    assert res["tasks"]["super_glue_cb"]["code"] == [1, 2, 3]


def test_unknown_task_and_template_are_clear_errors(tiny_paths):
    model = load_for_eval(str(tiny_paths["llama"]))
    with pytest.raises(ValueError, match="super_glue_rte"):  # lists the valid names
        evaluate(model, EvalConfig(tasks=["rte"]), progress=False)
    with pytest.raises(ValueError, match="available"):
        evaluate(model, EvalConfig(tasks=["super_glue_rte"], templates=["nope"]), progress=False)


def test_cli_eval_writes_json_and_markdown(tiny_paths, tmp_path, capsys):
    rc = main(["eval", "--model", str(tiny_paths["t5"]), "--tasks", "super_glue_cb", "--max-examples",
               "4", "--output-dir", str(tmp_path / "ev"), "--templates", "GPT-3 style", "can we infer"])
    assert rc == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(res["tasks"]["super_glue_cb"]["templates"]) == {"GPT-3 style", "can we infer"}
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "super_glue_cb" in md and "average of medians" in md
    assert main(["eval", "--model", str(tmp_path / "missing"), "--tasks", "super_glue_cb"]) == 2
    assert "missing" in capsys.readouterr().err
