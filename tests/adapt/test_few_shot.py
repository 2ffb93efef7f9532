"""Few-shot adaptation: shots, the table, the CLI end to end, templates judged without evaluation labels."""
from __future__ import annotations

import json
from collections import Counter
from types import MappingProxyType



from adapt_support import _NoLabels, need_data, saved_checkpoint, train_tiny_run  # tests/adapt is on sys.path under pytest

L, K = 4, 8


def test_few_shot_shots_are_balanced_seeded_and_disjoint_from_eval():
    need_data()
    from ctr.tasks.splits import few_shot
    s = few_shot("super_glue_rte", 8, seed=1)
    assert s.source == "train" and s.exclude == []
    assert Counter(e.label for e in s.examples) == Counter({0: 4, 1: 4})
    assert [e.index for e in few_shot("super_glue_rte", 8, seed=1).examples] == [e.index for e in s.examples]
    sc = few_shot("story_cloze_2016", 6, seed=0)
    assert sc.source.startswith("eval") and sorted(sc.exclude) == sorted(e.index for e in sc.examples)




def test_few_shot_table_is_computed_from_the_runs():
    from ctr.adapt.few_shot import few_shot_table

    def run(medians):
        return {"tasks": {t: {"median": m} for t, m in medians.items()}}
    runs = {"bitwise": run({"super_glue_cb": 70.0, "trec": 41.25}),
            "discrete": run({"super_glue_cb": 50.0, "trec": 30.0})}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in few_shot_table(runs).splitlines()[2:]}
    assert rows["super_glue_cb"] == ["super_glue_cb", "70.0", "50.0", "78.6"]  # + paper few-shot
    assert rows["trec"] == ["trec", "41.2", "30.0", "-"]  # no paper number
    assert rows["**average**"] == ["**average**", "55.6", "40.0", "78.6"]
    runs["discrete"]["tasks"]["trec"]["median"] = 10.0
    rows = {line.split("|")[1].strip(): line for line in few_shot_table(runs).splitlines()[2:]}
    assert "| 10.0 |" in rows["trec"] and "| 30.0 |" in rows["**average**"]



def test_cli_zero_label_and_few_shot_end_to_end(tiny_paths, task_file, tmp_path, capsys):
    need_data()
    from ctr.cli import main
    run = train_tiny_run(tmp_path / "s1", tiny_paths, task_file)
    zl = tmp_path / "zl"
    assert main(["zero-label", "--checkpoint", str(run), "--tasks", "super_glue_cb", "anli_r2",
                 "--n-inputs", "4", "--max-templates", "1", "--max-examples", "5",
                 "--eval-max-templates", "2", "--output-dir", str(zl)]) == 0
    res = json.loads((zl / "results.json").read_text())
    sel = json.loads((zl / "zero_label.json").read_text())["tasks"]
    assert set(res["tasks"]) == {"super_glue_cb", "anli_r2"}
    assert not set(res["tasks"]["anli_r2"]["indices"]) & set(sel["anli_r2"]["selection_indices"])
    assert res["tasks"]["super_glue_cb"]["code"] == sel["super_glue_cb"]["code"]
    fs = tmp_path / "fs"
    assert main(["few-shot", "--checkpoint", str(run), "--tasks", "super_glue_cb", "--shots", "3",
                 "--max-templates", "1", "--max-sweeps", "1", "--values", "seen", "--max-examples", "5",
                 "--eval-max-templates", "1", "--prompt-tuning", "--prompt-steps", "2",
                 "--holdout", "0.34", "--output-dir", str(fs)]) == 0
    out = json.loads((fs / "results.json").read_text())
    assert set(out["runs"]) == {"bitwise", "discrete", "prompt_tuning"}
    adapted = out["adapted"]["super_glue_cb"]
    assert adapted["chosen_by"] == "held-out shots"
    traj = [json.loads(x) for x in (fs / "trajectory_super_glue_cb.jsonl").read_text().splitlines()]
    assert adapted["search_code"] == traj[-1]["code"] and adapted["search_objective"] == traj[-1]["objective"]
    visited = [traj[0]["code"]] + [r["code"] for r in traj[1:] if r["accepted"]]
    held = adapted["held_out_objectives"]  # the returned code: the visited one best on held-out shots
    assert len(held) == len(visited)
    assert adapted["code"] == visited[max(i for i, h in enumerate(held) if h == min(held))]
    assert "prompt_tuning (median)" in (fs / "results.md").read_text()
    plain = tiny_paths["llama"]
    assert main(["few-shot", "--checkpoint", str(plain), "--tasks", "super_glue_cb"]) == 2
    assert "not a CTR checkpoint" in capsys.readouterr().err  # adaptation needs a CTR model



def _hide_eval_labels(monkeypatch):
    """Evaluation examples reach the selection code (ctr.tasks.splits, ctr.tasks.registry) without
    labels: any read fails. `ctr.inference.evaluate` keeps its own loader, to score at the end."""
    import ctr.tasks.registry as eval_tasks
    import ctr.tasks.splits as splits
    from ctr.tasks.registry import TaskExample
    real = eval_tasks.load_examples

    def hidden(task, split="eval", *a, **k):
        examples = real(task, split, *a, **k)
        if split != "eval":
            return examples
        return [TaskExample(e.index, e.fields, MappingProxyType(_NoLabels()), e.label_field)
                for e in examples]
    monkeypatch.setattr(eval_tasks, "load_examples", hidden)
    monkeypatch.setattr(splits, "load_examples", hidden)


def test_few_shot_and_prompt_tuning_judge_templates_without_evaluation_labels(tiny_paths, tmp_path,
                                                                              monkeypatch):
    """Template usability for the search and for prompt tuning is judged on the shots (CB:
    train split), never on labelled evaluation examples."""
    need_data()
    from ctr.tasks.registry import usable_templates
    from ctr.adapt.few_shot import FewShotConfig, run_few_shot
    from ctr.tasks.splits import few_shot
    run = saved_checkpoint(tmp_path / "ckpt", tiny_paths)
    shots = few_shot("super_glue_cb", 4, seed=0).examples
    expected = [t.name for t in usable_templates("super_glue_cb", examples=shots).usable][:2]
    _hide_eval_labels(monkeypatch)
    out = run_few_shot(FewShotConfig(
        checkpoint=str(run), tasks=["super_glue_cb"], shots=4, max_templates=2, max_sweeps=1,
        values="seen", max_examples=4, eval_max_templates=1, prompt_tuning=True, prompt_steps=1,
        output_dir=str(tmp_path / "fs")))
    assert out["adapted"]["super_glue_cb"]["templates"] == expected
    assert set(out["runs"]) == {"bitwise", "discrete", "prompt_tuning"}
    codes = json.loads((tmp_path / "fs" / "codes.json").read_text())
    assert codes == {"codes": {"super_glue_cb": out["adapted"]["super_glue_cb"]["code"]},
                     "exclude": {"super_glue_cb": []}}
