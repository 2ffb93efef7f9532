"""Selection-protocol audit: the authors' protocol is opt-in, and the audit separates
selection examples from disjoint evaluation examples."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from ctr.adapt.authors_protocol import distribution_distance, gold_distribution, label_balanced_eval
from ctr.adapt.zero_label import AdaptCommon, ZeroLabelConfig
from test_adapt import ctr_model, need_data, train_tiny_run  # tests/ is on sys.path under pytest


def test_authors_protocol_is_never_the_default():
    assert AdaptCommon().protocol == "ours"
    with pytest.raises(ValueError, match="--protocol"):
        ZeroLabelConfig(protocol="author")
    from ctr.cli import build_parser
    for cmd in ("zero-label", "few-shot"):
        args = build_parser().parse_args([cmd])
        assert args.protocol == "ours"


def test_default_selection_never_reaches_the_authors_code(monkeypatch):
    need_data()
    import ctr.adapt.zero_label as zl
    from ctr.adapt.few_shot import FewShotConfig, adapt_task
    from ctr.inference.scoring import RankScorer

    def forbidden(*a, **k):
        raise AssertionError("authors' protocol used without --protocol authors")
    for name in ("label_balanced_eval", "gold_distribution", "distribution_distance", "authors_gold_indices"):
        monkeypatch.setattr(zl, name, forbidden)
    model = ctr_model()
    scorer = RankScorer(model, 8, progress=False)
    cands = zl.candidate_codes(model)
    zl.select_code(model, "super_glue_cb", ZeroLabelConfig(n_inputs=4, max_templates=1), cands, scorer)
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        adapt_task(model, "super_glue_cb", FewShotConfig(shots=2, max_templates=1, max_sweeps=1, values="seen"),
                   cands, scorer, Path(d))


def test_label_balanced_eval_reads_gold_labels_and_excludes_nothing():
    need_data()
    s = label_balanced_eval("super_glue_rte", 10, seed=0)
    assert s.source.startswith("eval") and s.exclude == []
    assert Counter(e.label for e in s.examples) == Counter({0: 5, 1: 5})


def test_distribution_distance():
    gold = gold_distribution([0, 0, 1, 1])
    assert gold == {0: 0.5, 1: 0.5}
    assert distribution_distance([0, 1, 0, 1], gold) == 0
    assert distribution_distance([0, 0, 0, 0], gold) == pytest.approx(0.5)
    assert distribution_distance([2, 2], gold) == pytest.approx(1.0)


def test_audit_end_to_end(tiny_paths, task_file, tmp_path):
    need_data()
    from ctr.cli import main
    run = train_tiny_run(tmp_path / "s1", tiny_paths, task_file)
    out = tmp_path / "audit"
    assert main(["audit", "--checkpoint", str(run), "--tasks", "super_glue_cb", "anli_r1",
                 "--n-inputs", "4", "--shots", "2", "--max-templates", "1", "--eval-max-templates", "1",
                 "--max-examples", "6", "--output-dir", str(out)]) == 0
    rows = json.loads((out / "audit.json").read_text())["rows"]
    assert {(r["task"], r["method"], r["protocol"]) for r in rows} == {
        (t, m, p) for t in ("super_glue_cb", "anli_r1") for m in ("zero-label", "few-shot")
        for p in ("ours", "authors")}
    for r in rows:
        assert r["disjoint_examples"] == 6
        assert r["optimism"] == pytest.approx(r["acc_selection"] - r["acc_disjoint"], abs=0.011)
        if r["protocol"] == "authors":
            assert r["selection_source"].startswith("eval (authors")
        elif r["task"] == "super_glue_cb":
            assert r["selection_source"] == "train" and r["acc_reported"] == r["acc_disjoint"]
    assert "optimism" in (out / "audit.md").read_text()
    assert main(["audit", "--checkpoint", str(run), "--protocol", "authors"]) == 2
