"""Selection-protocol audit: the authors' protocol is opt-in, and the audit separates
selection examples from disjoint evaluation examples."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from ctr.adapt.authors_protocol import distribution_distance, gold_distribution, label_balanced_eval
from ctr.adapt.common import AdaptCommon
from ctr.adapt.zero_label import ZeroLabelConfig
from adapt_support import ctr_model, need_data, train_tiny_run  # tests/adapt is on sys.path under pytest


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
    import ctr.adapt.code_ensemble as ce
    import ctr.adapt.common as common
    from ctr.adapt.few_shot import FewShotConfig, adapt_task
    from ctr.inference.scoring import RankScorer

    def forbidden(*a, **k):
        raise AssertionError("authors' protocol used without --protocol authors")
    monkeypatch.setattr(common, "label_balanced_eval", forbidden)
    for name in ("gold_distribution", "distribution_distance", "authors_gold_indices"):
        monkeypatch.setattr(ce, name, forbidden)
    model = ctr_model()
    scorer = RankScorer(model, 8, progress=False)
    cands = common.candidate_codes(model)
    ce.select_code(model, "super_glue_cb", ZeroLabelConfig(n_inputs=4, max_templates=1), cands, scorer)
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
    # every row was also appended to audit.jsonl as it was measured, with the run's provenance
    from ctr.adapt.audit import audit_markdown, read_audit_rows
    from ctr.fileio import read_jsonl
    appended = read_jsonl(out / "audit.jsonl")
    assert [{k: v for k, v in r.items() if k != "provenance"} for r in appended] == rows
    prov = json.loads((out / "audit.json").read_text())["provenance"]
    assert all(r["provenance"] == prov for r in appended) and prov["command"].startswith("ctr audit")
    assert (out / "audit.md").read_text() == audit_markdown(*read_audit_rows(out)[::-1])
    (out / "audit.json").unlink()  # a run cut before its end: the rows come from audit.jsonl
    assert read_audit_rows(out) == (appended, None)
    assert main(["audit", "--checkpoint", str(run), "--protocol", "authors"]) == 2
