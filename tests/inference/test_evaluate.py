"""`ctr eval` on tiny models with the real held-out data (skipped without the data)."""
from __future__ import annotations

import json

import pytest

from ctr.cli import main
from ctr.config import CTRConfig
from ctr.tasks.mixture import data_dir
from ctr.inference.evaluate import EvalConfig, evaluate, markdown_table
from ctr.core.loading import load_model
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone


@pytest.fixture(autouse=True)
def need_data():
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"held-out data not available: {e}")


def test_bare_backbone_eval_structure_and_table(tiny_paths):
    model = load_model(str(tiny_paths["llama"]))
    assert not model.config.use_codes
    cfg = EvalConfig(tasks=["super_glue_rte", "super_glue_copa"], max_examples=6, batch_size=4)
    res = evaluate(model, cfg, progress=False)
    rte = res["tasks"]["super_glue_rte"]
    assert rte["examples"] == 6 and len(rte["templates"]) == 10
    accs = [t["accuracy"] for t in rte["templates"].values()]
    for t in rte["templates"].values():  # a share of the 6 examples, not just "a percentage"
        assert t["n"] == 6 and t["accuracy"] in {round(100 * k / 6, 2) for k in range(7)}
    assert rte["median"] == pytest.approx(sorted(accs)[4] / 2 + sorted(accs)[5] / 2)
    copa = res["tasks"]["super_glue_copa"]
    assert sum(1 for t in copa["templates"].values() if t["n"]) >= 8  # cause/effect-only ones may be empty
    assert res["average_of_medians"] == pytest.approx((rte["median"] + copa["median"]) / 2, abs=0.01)
    assert res["model"]["sha256"] and res["hardware"]["threads"] >= 1
    # the table shows these results (and the zero-shot results given), not fixed numbers
    cells = table_rows(markdown_table(res, res))
    assert cells["super_glue_rte"] == ["super_glue_rte", "10", "6", f"{rte['median']:.1f}",
                                       f"{rte['mean']:.1f}", f"{rte['median_norm']:.1f}",
                                       f"{rte['median']:.1f}", "80.5", "81.2"]
    assert cells["super_glue_copa"][3] == f"{copa['median']:.1f}"
    assert cells["**average of medians**"][3] == f"**{res['average_of_medians']:.1f}**"
    zero = {"tasks": {"super_glue_rte": {"median": 40.0}, "super_glue_copa": {"median": 61.0}}}
    changed = json.loads(json.dumps(res))
    changed["tasks"]["super_glue_rte"].update(median=12.34, examples=99)
    cells = table_rows(markdown_table(changed, zero))
    assert cells["super_glue_rte"][2:7] == ["99", "12.3", f"{rte['mean']:.1f}",
                                            f"{rte['median_norm']:.1f}", "40.0"]
    assert cells["**average of medians**"][6] == "50.5"  # mean of the zero-shot medians given
    assert cells["**average of medians**"][7:] == ["86.2", "86.1"]  # paper: (80.5+92.0)/2, (81.2+91.0)/2


def table_rows(md: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| task")]
    return {r[0]: r for r in rows}


def test_accuracy_counts_predictions_that_match_the_gold_choice(tiny_paths):
    """Scripted predictions (summed: always choice 1; per token: always choice 0) give
    the shares of gold labels 1 and 0 among each template's rendered examples, and the
    median and mean over templates."""
    import statistics
    from ctr.tasks.registry import get_task, load_examples, render_task, select_templates, task_templates
    from ctr.inference.evaluate import score_templates
    from ctr.inference.scoring import ChoiceScores

    class Scripted:
        def score(self, reqs):  # choice 1 has the best sum, choice 0 the best mean over 100 tokens
            return [ChoiceScores([-2.0, -1.0] + [-3.0] * (len(r.choices) - 2),
                                 [100] + [1] * (len(r.choices) - 1)) for r in reqs]
    model = load_model(str(tiny_paths["llama"]))
    task = get_task("super_glue_cb")
    examples = load_examples(task, max_examples=20, seed=3)
    names = ["GPT-3 style", "can we infer", "always/sometimes/never"]
    templates = select_templates(task_templates(task), names)
    out = score_templates(model, task, templates, examples, None, Scripted(), EvalConfig())
    want = []
    for t in templates:
        rendered = render_task(task, t, examples)[0]
        gold = [i.label_index for i in rendered]
        assert out["templates"][t.name]["n"] == len(gold) == 20
        # per example: right exactly where gold is choice 1, keyed by the example's index
        assert out["templates"][t.name]["indices"] == [i.index for i in rendered] == [e.index for e in examples]
        assert out["templates"][t.name]["correct"] == "".join("1" if g == 1 else "0" for g in gold)
        assert gold.count(1) != gold.count(0)  # so summed and per-token scoring are told apart
        want.append(round(100 * gold.count(1) / len(gold), 2))
        assert out["templates"][t.name]["accuracy"] == want[-1]
        assert out["templates"][t.name]["accuracy_norm"] == round(100 * gold.count(0) / len(gold), 2)
    assert out["median"] == round(statistics.median(want), 2)
    assert out["mean"] == round(statistics.mean(want), 2)


def test_subsample_is_seeded_and_exclusions_hold(tiny_paths, tmp_path):
    model = load_model(str(tiny_paths["llama"]))
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
    model = load_model(str(tiny_paths["llama"]))
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
