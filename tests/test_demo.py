"""`make demo` end to end on a tiny random Llama (real data, a few examples): every column
of its table is filled from the runs it trained, and the per-type codes are the training
codes of those types."""
from __future__ import annotations

import json

import pytest

from ctr import demo
from ctr.tasks.mixture import data_dir


def test_the_demo_runs_end_to_end(tiny_paths, tmp_path, capsys):
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"data not available: {e}")
    out = tmp_path / "demo"
    demo.main(["--model", str(tiny_paths["llama"]), "--steps", "2", "--stage2-steps", "2",
               "--examples", "4", "--limit-examples", "8", "--output-dir", str(out)])
    table = (out / "demo_table.md").read_text()
    for row in ("backbone zero-shot", "multi-task prompted baseline", "CTR stage 1", "CTR stage 2",
                "| sentiment | amazon_polarity_", "| topic_classification | ag_news_",
                "| paraphrase_identification | glue_qqp_", "| stage 1 |", "| stage 2 |"):
        assert row in table, row
    rows = [r for r in table.splitlines() if r.startswith("| ") and "[" in r]
    assert len(rows) == 6  # baseline, two zero-label rows, three task types: each with its interval
    for run in ("stage1", "stage2", "multitask"):
        assert (out / run / "final").is_dir(), run
    # stage 2 started from stage 1's codes; the baseline has none
    assert json.loads((out / "stage2" / "final" / "ctr_config.json").read_text())["use_codes"]
    assert not json.loads((out / "multitask" / "final" / "ctr_config.json").read_text())["use_codes"]
    saved = json.loads((out / "demo_results.json").read_text())
    assert len(saved["rows"]) == 4 and set(saved["per_type"]) == {
        "sentiment", "topic_classification", "paraphrase_identification"}
    selection = json.loads((out / "zero_label_s2" / "zero_label.json").read_text())
    assert selection["tasks"][demo.HELD_OUT]["selection_source"] != "validation"  # not the scored split
    assert "[demo] done" in capsys.readouterr().out
