"""`make demo` and `make demo-train` end to end on a tiny random Llama (real data, a few
examples): every column of the table is filled from the releases it loads by name or from
the runs it trained, each with its interval."""
from __future__ import annotations

import json

import pytest

from ctr import demo
from ctr.tasks.mixture import data_dir


SMALL = ["--stage2-steps", "2", "--examples", "4", "--limit-examples", "8"]
ROWS = ("backbone zero-shot", "multi-task prompted baseline", "CTR stage 1", "CTR stage 2",
        "CTR stage 2 zero-label minus the baseline:", "| CTR stage 1 |", "| CTR stage 2 |")


def interval_rows(table: str) -> list[str]:
    """Table rows with an interval: the 4 columns (3 against the backbone) and 2 code rows have none."""
    return [r for r in table.splitlines() if r.startswith("| ") and "[" in r]


def needs_data():
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"data not available: {e}")


def test_the_demo_loads_the_releases_and_trains_only_a_live_stage1(
        tiny_paths, lora_runs, tmp_path, capsys, monkeypatch):
    needs_data()
    from ctr.interop.release import release
    monkeypatch.setenv("CTR_CHECKPOINTS", str(tmp_path / "releases"))
    names = {k: f"tiny-demo-{k}" for k in ("s1", "s2", "mt")}
    for k, name in names.items():
        release(lora_runs[k], name, dest=tmp_path / "releases")
    monkeypatch.setattr(demo, "RELEASES", names)
    out = tmp_path / "demo"
    demo.main(["--model", str(tiny_paths["llama"]), "--steps", "2", "--examples", "4",
               "--limit-examples", "8", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert "1. a live stage-1 run: 2 steps" in printed and "[demo] done" in printed
    assert (out / "live_stage1" / "final").is_dir()  # the live run, shown ...
    assert not (out / "stage2").exists() and not (out / "multitask").exists()  # ... nothing else trained
    table = (out / "demo_table.md").read_text()
    for row in ROWS:
        assert row in table, row
    assert len(interval_rows(table)) == 4  # 4 accuracies, each with its interval and 3 differences
    saved = json.loads((out / "demo_results.json").read_text())
    assert saved["models"] == {**names, "source": "the releases under checkpoints/"}
    assert saved["examples"] == 4 and saved["templates"] >= 2  # every template by default
    for stage in ("s1", "s2"):  # the code chosen is a training code of the release, no label read
        zl = json.loads((out / f"zero_label_{stage}" / "zero_label.json").read_text())
        assert zl["config"]["checkpoint"] == names[stage]
        assert zl["tasks"][demo.HELD_OUT]["selection_source"] != "validation"
        table_codes = json.loads((lora_runs[stage] / "final" / "code_table.json").read_text())
        assert saved["codes"][stage]["code"] in table_codes.values()
    # a release on another backbone is refused before anything runs
    with pytest.raises(ValueError, match="is on the backbone .* not --model 'smollm2'"):
        demo.release_models("smollm2")
    with pytest.raises(SystemExit):
        demo.main(["--stage2-steps", "3"])
    assert "choose what --train trains: pass --train" in capsys.readouterr().err


def test_the_demo_trains_everything_with_train(tiny_paths, tmp_path, capsys, monkeypatch):
    needs_data()
    out = tmp_path / "demo"
    demo.main(["--train", "--model", str(tiny_paths["llama"]), "--steps", "2", "--templates", "2", *SMALL,
               "--output-dir", str(out)])
    table = (out / "demo_table.md").read_text()
    for row in ROWS:
        assert row in table, row
    assert len(interval_rows(table)) == 4
    for run in ("stage1", "stage2", "multitask"):
        assert (out / run / "final").is_dir(), run
    # stage 2 started from stage 1's codes; the baseline has none
    assert json.loads((out / "stage2" / "final" / "ctr_config.json").read_text())["use_codes"]
    assert not json.loads((out / "multitask" / "final" / "ctr_config.json").read_text())["use_codes"]
    saved = json.loads((out / "demo_results.json").read_text())
    assert len(saved["rows"]) == 4 and saved["templates"] == 2 and set(saved["codes"]) == {"s1", "s2"}
    selection = json.loads((out / "zero_label_s2" / "zero_label.json").read_text())
    assert selection["tasks"][demo.HELD_OUT]["selection_source"] != "validation"  # not the scored split
    assert "[demo] done" in capsys.readouterr().out

    # --stage1 NAME: the same from a released codebook, without training stage 1. The release's
    # task order differs from MIXTURE (as the committed smollm2-near20-s1's does): stage 2 keeps it.
    from ctr.interop.release import release
    rel = release(out / "stage1", "tiny-near20", dest=tmp_path / "releases")
    cfg = json.loads((rel / "ctr_config.json").read_text())
    cfg["task_names"] = cfg["task_names"][::-1]
    (rel / "ctr_config.json").write_text(json.dumps(cfg))
    from ctr.core.locate import sha256  # released so: its release.json vouches for the new order
    info = json.loads((rel / "release.json").read_text())
    info["files"]["ctr_config.json"]["sha256"] = sha256(rel / "ctr_config.json")
    (rel / "release.json").write_text(json.dumps(info))
    monkeypatch.setenv("CTR_CHECKPOINTS", str(tmp_path / "releases"))
    out2 = tmp_path / "demo_released"
    demo.main(["--train", "--model", str(tiny_paths["llama"]), "--stage1", "tiny-near20", "--templates", "2",
               *SMALL, "--output-dir", str(out2)])
    printed = capsys.readouterr().out
    assert "[demo] stage 1: the released codebook tiny-near20" in printed and "[demo] done" in printed
    assert not (out2 / "stage1").exists()  # nothing trained for stage 1
    s2 = json.loads((out2 / "stage2" / "final" / "ctr_config.json").read_text())
    assert s2["task_names"] == cfg["task_names"]
    assert json.loads((out2 / "stage2" / "train_config.json").read_text())["init_from"] == str(rel)
    assert json.loads((out2 / "zero_label_s1" / "zero_label.json").read_text())["config"]["checkpoint"] == str(rel)
    assert len(interval_rows((out2 / "demo_table.md").read_text())) == 4


def test_stage1_must_be_a_codebook_of_the_demo_tasks_on_its_backbone(tiny_paths, tmp_path, capsys):
    from ctr.core.model import CTRModel
    from ctr.config import CTRConfig
    from ctr.core.backbone import load_backbone
    backbone, tok = load_backbone(str(tiny_paths["llama"]))

    def saved(name, tasks, use_codes=True):
        cfg = CTRConfig(code_length=4, codebook_size=8, task_names=tasks, use_codes=use_codes,
                        backbone=str(tiny_paths["llama"]))
        CTRModel(backbone, cfg, tok).save_pretrained(tmp_path / name)
        return str(tmp_path / name)
    model = str(tiny_paths["llama"])
    with pytest.raises(ValueError, match=r"--stage1 .*other: trained on 3 tasks that are not the demo's 20"):
        demo.released_stage1(saved("other", ["a", "b", "c"]), model)
    good = saved("good", list(demo.MIXTURE))
    with pytest.raises(ValueError, match=r"its backbone is .* pass --model"):
        demo.released_stage1(good, "smollm2")
    with pytest.raises(ValueError, match="no stage-1 codebook"):
        demo.released_stage1(saved("nocodes", list(demo.MIXTURE), use_codes=False), model)
    with pytest.raises(SystemExit):
        demo.main(["--train", "--stage1", good, "--steps", "3"])
    assert "--steps sets the stage-1 training that --stage1 replaces" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--stage1 nowhere"):
        demo.released_stage1("nowhere", model)
    assert demo.released_stage1(good, model).config.task_names == list(demo.MIXTURE)
