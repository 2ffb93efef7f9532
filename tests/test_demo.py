"""`make demo` on a tiny random Llama (real data, a few examples): releases made the way the
demo's are, loaded by name; every column is what `ctr eval` scores for that model and code, and
the table's numbers are those columns' medians, intervals and paired differences."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ctr import demo
from ctr.experiments.demo_table import Column, markdown, replicates, table
from ctr.tasks.mixture import data_dir


def need_data():
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"data not available: {e}")


QUICK = dict(steps=2, limit_examples=8, code_length=4, codebook_size=8, max_source_len=32)
SMALL = ["--examples", "4", "--selection-inputs", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def tiny_releases(tiny_paths, tmp_path_factory):
    """The demo's three releases, trained by its recipe (2 steps) on the tiny Llama."""
    need_data()
    from ctr.interop.release import release
    from ctr.train.trainer import train
    root = tmp_path_factory.mktemp("demo_releases")
    model = str(tiny_paths["llama"])
    s1 = train(demo.recipe("s1", root / "s1", model, **QUICK)).parent
    train(demo.recipe("s2", root / "s2", model, str(s1), **QUICK))
    train(demo.recipe("mt", root / "mt", model, **QUICK))
    names = {k: f"tiny-{k}" for k in ("s1", "s2", "mt")}
    for k, name in names.items():
        release(root / k, name, root / "releases")
    return root / "releases", names


def per_template(record):
    return {n: t["correct"] for n, t in record["templates"].items()}


def test_the_demo_scores_the_releases_as_ctr_eval_does(tiny_paths, tiny_releases, tmp_path, capsys,
                                                       monkeypatch):
    from ctr.core.loading import load_model
    from ctr.inference.evaluate import EvalConfig, evaluate
    releases, names = tiny_releases
    monkeypatch.setenv("CTR_CHECKPOINTS", str(releases))
    model = str(tiny_paths["llama"])
    out = tmp_path / "demo"
    saved = demo.main(["--model", model, "--live-steps", "2", "--limit-examples", "8", *SMALL,
                       "--output-dir", str(out), *[a for k, n in names.items() for a in (f"--{k}", n)]])
    printed = capsys.readouterr().out
    assert "[demo] stage-1 LM loss" in printed and "[demo] done" in printed
    assert (out / "live_stage1" / "final").is_dir()  # the live run trained, and nothing else did
    assert not (out / "train").exists()
    on_disk = json.loads((out / "demo_results.json").read_text())
    assert on_disk["table"] == json.loads(json.dumps(saved["table"]))
    cols, rows = saved["columns"], {r["key"]: r for r in saved["table"]["rows"]}
    assert list(rows) == ["backbone", "mt", "s1", "s2"]
    scope = dict(tasks=[demo.HELD_OUT], max_examples=4, batch_size=4)
    # every column is what ctr eval scores for that model (and the code the ensemble chose)
    for key, source in (("backbone", model), ("mt", names["mt"]), ("s1", names["s1"]), ("s2", names["s2"])):
        rec = cols[key]["record"]
        assert rec["examples"] == 4 and rec["indices"] == cols["backbone"]["record"]["indices"]
        sel = cols[key]["selection"]
        kw = {} if sel is None else {"code": ",".join(map(str, sel["code"]))}
        want = evaluate(load_model(source), EvalConfig(**scope, **kw), progress=False)["tasks"][demo.HELD_OUT]
        assert per_template(rec) == per_template(want), key
        accs = sorted(t["accuracy"] for t in want["templates"].values() if t["n"])
        assert rows[key]["accuracy"] == pytest.approx(float(np.median(accs)))
        if key != "backbone":
            assert rows[key]["vs_reference"] == pytest.approx(rows[key]["accuracy"] - rows["backbone"]["accuracy"])
    # zero-label columns: the code chosen is a training task's code of that release, no label read
    from ctr.core.model import CTRModel
    for key in ("s1", "s2"):
        sel = cols[key]["selection"]
        table_ = CTRModel.from_pretrained(names[key]).code_table()
        assert all(table_[t] == sel["code"] for t in sel["from_tasks"])
        assert sel["selection_source"] == "train"  # not the scored split
    assert cols["mt"]["selection"] is None and cols["backbone"]["selection"] is None
    md = (out / "demo_table.md").read_text()
    for words in ("backbone zero-shot", "multi-task prompted baseline", "CTR stage 1", "CTR stage 2",
                  "CTR stage 2 (LoRA), zero-label - multi-task prompted baseline", "## What the codes did",
                  "## Where the time went", "| **total** |", "4 validation examples"):
        assert words in md, words


def test_the_demo_refuses_releases_it_cannot_show(tiny_paths, tiny_releases, monkeypatch):
    releases, names = tiny_releases
    monkeypatch.setenv("CTR_CHECKPOINTS", str(releases))
    model = str(tiny_paths["llama"])
    with pytest.raises(ValueError, match="--s2 tiny-mt: a model without codes cannot be zero-label CTR"):
        demo.check_release("s2", names["mt"], model)
    with pytest.raises(ValueError, match="--mt tiny-s2: the baseline has no codes"):
        demo.check_release("mt", names["s2"], model)
    with pytest.raises(ValueError, match=r"its backbone is .* pass --model"):
        demo.check_release("s1", names["s1"], "smollm2")
    with pytest.raises(FileNotFoundError, match="--s1 nowhere: .*released: .*tiny-s1"):
        demo.check_release("s1", "nowhere", model)
    assert demo.check_release("s1", names["s1"], model) == releases / names["s1"]


def test_demo_train_trains_the_three_models_with_the_releases_recipe(tiny_paths, tmp_path):
    need_data()
    out = tmp_path / "demo_train"
    saved = demo.main(["--model", str(tiny_paths["llama"]), "--train", "--steps", "2", "--limit-examples", "8",
                       *SMALL, "--output-dir", str(out)])
    cfgs = {k: json.loads((out / "train" / k / "train_config.json").read_text()) for k in ("s1", "s2", "mt")}
    assert cfgs["s2"]["init_from"] == str(out / "train" / "s1") and cfgs["s2"]["lora"] and cfgs["mt"]["lora"]
    assert cfgs["mt"]["no_codes"] and cfgs["s2"]["lr"] == cfgs["mt"]["lr"] == demo.LORA_LR
    assert all(c["tasks"] == sorted(demo.MIXTURE) and c["max_source_len"] == 128 for c in cfgs.values())
    assert {r["source"] for r in saved["table"]["rows"]} == {
        str(tiny_paths["llama"]), *(str(out / "train" / k) for k in ("s1", "s2", "mt"))}
    assert not (out / "live_stage1").exists()


# ---- the table code alone, on outcomes made up to be checked by hand -----------------------------
def record(bits_per_template: list[str]):
    n = len(bits_per_template[0])
    return {"examples": n, "templates": {
        f"t{i}": {"n": n, "accuracy": round(100 * b.count("1") / n, 2), "indices": list(range(n)),
                  "correct": b} for i, b in enumerate(bits_per_template)}}


def test_the_table_is_medians_with_paired_intervals():
    rng = np.random.default_rng(0)
    base = ["0" * 20 + "".join(rng.choice(["0", "1"], 180)) for _ in range(3)]
    flipped = ["1" * 20 + b[20:] for b in base]  # 20 more examples right in every template
    cols = [Column("backbone", "backbone", "x", record(base)),
            Column("same", "same", "y", record(base)),
            Column("better", "better", "z", record(flipped)),
            Column("all", "all right", "w", record(["1" * 200] * 3))]
    t = table(cols, "task", "backbone", [("better", "same")], n_boot=500)
    rows = {r["key"]: r for r in t["rows"]}
    medians = {k: float(np.median([100 * b.count("1") / 200 for b in bits]))
               for k, bits in (("backbone", base), ("better", flipped))}
    assert rows["backbone"]["accuracy"] == pytest.approx(medians["backbone"])
    assert rows["better"]["accuracy"] == pytest.approx(medians["better"])
    # the same outcomes: a difference of exactly 0 in every replicate (paired draws)
    assert rows["same"]["vs_reference"] == 0 and rows["same"]["vs_reference_ci"] == [0.0, 0.0]
    assert rows["same"]["overlaps_reference"]
    # 20 of 200 examples more right in every template: the paired difference is +10 points, its
    # interval above 0 and narrower than the column's own (the shared 180 examples cancel)
    d = t["differences"][0]
    assert d["diff"] == pytest.approx(10.0) and d["diff"] == pytest.approx(medians["better"] - medians["backbone"])
    width = rows["backbone"]["ci"][1] - rows["backbone"]["ci"][0]
    assert 0 < d["ci"][0] < 10 < d["ci"][1] and d["ci"][1] - d["ci"][0] < 0.75 * width
    assert rows["all"]["ci"] == [100.0, 100.0] and not rows["all"]["overlaps_reference"]
    reps = replicates(cols, "task", n_boot=500)
    assert np.array_equal(reps["same"], reps["backbone"])
    md = markdown(t, "title")
    assert "| all right | w | 100.0 [100.0, 100.0] |" in md and "| better - same |" in md


def test_a_column_without_per_example_outcomes_is_refused():
    rec = record(["1010"])
    del rec["templates"]["t0"]["indices"]
    with pytest.raises(ValueError, match="old: task: results without per-example outcomes"):
        table([Column("backbone", "old", "x", rec)], "task", "backbone", [])
