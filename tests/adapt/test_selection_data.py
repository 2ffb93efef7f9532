"""Selection data never reaches evaluation: codes files carry their exclusions."""
from __future__ import annotations

import json


from ctr.inference.evaluate import EvalConfig

from adapt_support import ctr_model, need_data, saved_checkpoint, small_data_dir  # tests/adapt is on sys.path under pytest

L, K = 4, 8


def test_eval_with_a_zero_label_codes_file_keeps_its_selection_examples_out(tiny_paths, tmp_path, capsys):
    """ANLI has no train split: zero-label selects on validation examples. `ctr eval
    --codes-file codes.json`, with no --exclude-indices, must not score them."""
    need_data()
    from ctr.cli import main
    from ctr.tasks.registry import load_examples
    data = str(small_data_dir(tmp_path / "data", {"anli_r1": 30, "super_glue_cb": 12}))
    run = saved_checkpoint(tmp_path / "ckpt", tiny_paths)
    zl = tmp_path / "zl"
    assert main(["zero-label", "--checkpoint", str(run), "--tasks", "anli_r1", "super_glue_cb",
                 "--n-inputs", "7", "--max-templates", "1", "--no-eval", "--data-dir", data,
                 "--output-dir", str(zl)]) == 0
    sel = json.loads((zl / "zero_label.json").read_text())["tasks"]
    picked = set(sel["anli_r1"]["selection_indices"])
    assert len(picked) == 7 and sel["anli_r1"]["selection_source"].startswith("eval")
    capsys.readouterr()
    ev = tmp_path / "ev"
    assert main(["eval", "--model", str(run), "--codes-file", str(zl / "codes.json"), "--tasks",
                 "anli_r1", "super_glue_cb", "--templates", "GPT-3 style", "--data-dir", data,
                 "--output-dir", str(ev)]) == 0
    assert "anli_r1: 7 examples excluded" in capsys.readouterr().out
    res = json.loads((ev / "results.json").read_text())["tasks"]
    all_anli = {e.index for e in load_examples("anli_r1", root=data)}
    assert len(all_anli) == 30
    assert set(res["anli_r1"]["indices"]) == all_anli - picked  # every other example, none of these
    assert res["anli_r1"]["examples"] == len(all_anli) - 7 and res["anli_r1"]["excluded"] == 7
    assert res["anli_r1"]["code"] == sel["anli_r1"]["code"]
    # CB selects on its train split: nothing to exclude
    assert res["super_glue_cb"]["examples"] == 12
    assert res["super_glue_cb"]["excluded"] == 0
    # an explicit --exclude-indices is united with the codes file's exclusions
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"anli_r1": [min(picked), min(all_anli - picked)]}))
    assert main(["eval", "--model", str(run), "--codes-file", str(zl / "codes.json"), "--tasks",
                 "anli_r1", "--templates", "GPT-3 style", "--max-examples", "20", "--data-dir", data,
                 "--exclude-indices", str(extra), "--output-dir", str(ev)]) == 0
    res = json.loads((ev / "results.json").read_text())["tasks"]["anli_r1"]
    assert not set(res["indices"]) & (picked | {min(all_anli - picked)}) and res["excluded"] == 8


def test_every_codes_file_reader_takes_both_formats(tmp_path):
    """codes.json now carries its exclusions; every reader of codes files reads it, and
    still reads an older plain {task: code} file (which excludes nothing)."""
    from ctr.inference.evaluate import codes_for_tasks, eval_exclusions
    from ctr.core.codes import codes_file_content, read_checked_codes, read_codes_file
    from ctr.fileio import write_json
    from ctr.inference.generation import GenerateConfig, resolve_code
    from ctr.adapt.common import candidate_codes
    model = ctr_model()
    codes = {"anli_r1": [1, 2, 3, 4], "super_glue_cb": [0, 0, 7, 7]}
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    write_json(new, codes_file_content(codes, {"anli_r1": [5, 3], "super_glue_cb": []}))
    write_json(old, codes)
    for path, excluded in ((new, {"anli_r1": {3, 5}, "super_glue_cb": set()}), (old, {})):
        assert read_codes_file(path)[0] == codes
        assert read_checked_codes(str(path), L, K) == codes
        assert resolve_code(model, GenerateConfig(task="super_glue_cb", codes_file=str(path))) == [0, 0, 7, 7]
        assert codes_for_tasks(model, EvalConfig(codes_file=str(path)), list(codes)) == codes
        assert sorted(c for c, _ in candidate_codes(model, str(path))) == sorted(codes.values())
        assert eval_exclusions(EvalConfig(codes_file=str(path))) == excluded
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"anli_r1": [5, 9], "hellaswag": [1]}))
    assert eval_exclusions(EvalConfig(codes_file=str(new), exclude_indices=str(extra))) == {
        "anli_r1": {3, 5, 9}, "super_glue_cb": set(), "hellaswag": {1}}
    # a codes.json passed as --exclude-indices gives its exclusions, not nothing
    assert eval_exclusions(EvalConfig(exclude_indices=str(new)))["anli_r1"] == {3, 5}


