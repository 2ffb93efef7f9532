"""scripts/compile_evidence.py on small fabricated run folders.

The fabricated files are committed results JSON of the real commands (`ctr eval`, `ctr
zero-label`, `ctr few-shot`, `ctr train`) with only their numbers replaced, laid out as
scripts/evidence_smollm2.sh writes them. Every expected number below is recomputed here from
the fabricated counts, so the table must follow its inputs.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from ctr.analysis.stats import bootstrap_ci, paired_effect

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = {  # real outputs of the commands, used as the shape of the fabricated ones
    "eval": ROOT / "results/stage1_cpu_recipe/cpu/backbone_sst2_results.json",
    "zero_label_results": ROOT / "results/stage1_cpu_recipe/cpu/zero_label_sst2_results.json",
    "zero_label": ROOT / "results/stage1_cpu_recipe/cpu/zero_label_sst2.json",
    "few_shot": ROOT / "results/adaptation/cpu/few_shot.json",
    "train_config": ROOT / "results/stage1/h200/s1_train_config.json",
    "metrics": ROOT / "results/stage1_cpu_recipe/cpu/stage1_metrics.jsonl",
}
pytestmark = pytest.mark.skipif(not all(p.exists() for p in COMMITTED.values()),
                                reason="committed results JSON (the shapes) missing")

spec = importlib.util.spec_from_file_location("compile_evidence", ROOT / "scripts/compile_evidence.py")
ce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ce)

MIX = ["ag_news_classify", "ag_news_recommend", "amazon_polarity_Is_this_review", "glue_qqp_answer"]
LODO_MIX = [t for t in MIX if not t.startswith("ag_news_")]
TEMPLATES = {"glue_sst2": ["following positive negative", "happy or mad", "positive negative after",
                           "review", "said"],
             "trec": ["pick_the_best_descriptor", "trec1", "trec2"],
             "ag_news": ["classify", "recommend", "which_section"]}
N = {"glue_sst2": 872, "trec": 500, "ag_news": 500}


def read(name):
    return json.loads(COMMITTED[name].read_text())


def task_record(task: str, ks: list[int]) -> dict:
    """A task record of `ctr eval`'s results.json (the committed one's keys) with k correct
    of N[task] per template."""
    rec = copy.deepcopy(next(iter(read("eval")["tasks"].values())))
    n = N[task]
    rec["templates"] = {t: {"n": n, "accuracy": round(100 * k / n, 2), "accuracy_norm": round(100 * k / n, 2),
                            "skipped": {}} for t, k in zip(TEMPLATES[task], ks)}
    accs = [100 * k / n for k in ks]
    rec.update(examples=n, indices=list(range(n)), median=round(statistics.median(accs), 2),
               mean=round(statistics.mean(accs), 2), median_norm=round(statistics.median(accs), 2))
    return rec


def results_json(skeleton: str, task: str, ks: list[int]) -> dict:
    res = read(skeleton)
    res["tasks"] = {task: task_record(task, ks)}
    res["provenance"] = {"commit": "f" * 40, "dirty": False, "time": "2026-11-28T00:00:00+00:00",
                         "command": "ctr ...", "hardware": res["hardware"]}
    return res


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def fabricate(runs: Path, data: dict, agreements: dict | None = None, mode: str = "full") -> Path:
    """data[(seed, pair, task, column)] = k per template; seed None: the shared backbone file."""
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "MODE").write_text(mode + "\n")
    (runs / "timings.tsv").write_text("seed0 main stage 1\t600\t2026-11-28T00:10:00Z\n"
                                      "seed0 main glue_sst2 few-shot\t1200\t2026-11-28T00:30:00Z\n")
    for (seed, pair, task, col), ks in data.items():
        if col == "backbone":
            where = runs / "backbone" / task / ("" if seed is None else f"seed{seed}")
            write(where / "results.json", results_json("eval", task, ks))
        elif col == "mt":
            write(runs / f"seed{seed}/{pair}/{task}/mt/results.json", results_json("eval", task, ks))
        elif col in ("zl_s1", "zl_s2"):
            d = runs / f"seed{seed}/{pair}/{task}/{col}"
            res = results_json("zero_label_results", task, ks)
            sel = read("zero_label")
            rec = next(iter(sel["tasks"].values()))
            agree = (agreements or {}).get((seed, pair, task, col), [0.9, 0.8, 0.7])
            rec["ranked"] = [dict(rec["ranked"][0], agreement=a, tasks=[MIX[i % len(MIX)]])
                             for i, a in enumerate(agree)]
            rec.update(agreement=max(agree), from_tasks=[MIX[0]])
            sel["tasks"] = {task: rec}
            res["zero_label"] = {task: {k: v for k, v in rec.items() if k != "ranked"}}
            write(d / "results.json", res)
            write(d / "zero_label.json", sel)
        else:  # bitwise / discrete / prompt_tuning: one few-shot results.json
            f = runs / f"seed{seed}/{pair}/{task}/fs/results.json"
            fs = json.loads(f.read_text()) if f.exists() else read("few_shot")
            if not f.exists():
                fs["runs"] = {}
                fs["adapted"] = {task: next(iter(fs["adapted"].values()))}
                fs["config"]["checkpoint"] = str(runs / f"seed{seed}/{pair}/s1")
            fs["runs"][col] = results_json("eval", task, ks)
            write(f, fs)
    metrics = COMMITTED["metrics"].read_text().splitlines()[-12:]
    for seed in {k[0] for k in data if k[0] is not None}:
        for pair, mix in (("main", MIX), ("lodo", LODO_MIX)):
            for run, stage, no_codes in (("s1", 1, False), ("mt", 2, True), ("s2", 2, False)):
                if pair == "lodo" and run == "s2":
                    continue
                d = runs / f"seed{seed}/{pair}/{run}"
                cfg = dict(read("train_config"), stage=stage, no_codes=no_codes, tasks=mix, seed=seed,
                           steps=100, batch_size=8)
                write(d / "train_config.json", cfg)
                (d / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
                (d / "final").mkdir(exist_ok=True)
    return runs


def spread(base: int, step: int = 10, n: int = 5) -> list[int]:
    return [base + step * i for i in range(n)]


def standard_data(shift: int = 0) -> dict:
    """Two seeds: SST-2 and TREC held out of the main mixture; AG News held in (main) and held
    out (leave-one-dataset-out), its backbone per seed (a subsample), the others shared."""
    d = {(None, "main", "glue_sst2", "backbone"): spread(430),
         (None, "main", "trec", "backbone"): spread(100, n=3)}
    for s in (0, 1):
        d[(s, "main", "ag_news", "backbone")] = spread(130 + 5 * s, n=3)
        for col, base in (("mt", 480 + shift), ("zl_s1", 470), ("zl_s2", 600), ("bitwise", 520),
                          ("discrete", 500), ("prompt_tuning", 510)):
            d[(s, "main", "glue_sst2", col)] = spread(base + 7 * s)
        for col, base in (("mt", 150), ("zl_s1", 140), ("zl_s2", 145), ("bitwise", 160),
                          ("discrete", 150), ("prompt_tuning", 170)):
            d[(s, "main", "trec", col)] = spread(base + 3 * s, n=3)
            d[(s, "main", "ag_news", col)] = spread(base + 200, n=3)
            if col != "zl_s2":
                d[(s, "lodo", "ag_news", col)] = spread(base + 50 + s, n=3)
    return d


def expected_value(data: dict, pair: str, task: str, col: str) -> float:
    """Median over templates per seed (k / n), mean over seeds; the shared backbone once."""
    per = [ks for (s, p, t, c), ks in data.items() if t == task and c == col and
           (p == pair or (c == "backbone"))]
    return statistics.mean(statistics.median(100 * k / N[task] for k in ks) for ks in per)


def args(**kw):
    return type("Args", (), {"n_boot": 500, "boot_seed": 0, "coupling": "comonotone", **kw})()


def row(ev, pair, task):
    return next(r for r in ev["rows"] if r["pair"] == pair and r["task"] == task)


def test_cells_and_differences_follow_the_inputs(tmp_path):
    data = standard_data()
    runs = fabricate(tmp_path / "runs", data)
    ev = ce.compile_evidence(runs, args())
    assert ev["seeds"] == [0, 1] and ev["mode"] == "full"
    assert [(r["pair"], r["task"]) for r in ev["rows"]] == [
        ("main", "ag_news"), ("main", "glue_sst2"), ("main", "trec"), ("lodo", "ag_news")]
    for r in ev["rows"]:
        for col, cell in r["cells"].items():
            if r["pair"] == "lodo" and col == "zl_s2":
                assert cell is None  # no stage 2 in the leave-one-out pair
                continue
            want = expected_value(data, r["pair"], r["task"], col)
            assert cell["value"] == pytest.approx(want, abs=1e-9), (r["pair"], r["task"], col)
            assert cell["ci_low"] <= cell["value"] <= cell["ci_high"]
    # the backbone on a full set is one file for both seeds; on AG News one per seed
    sst = row(ev, "main", "glue_sst2")
    assert sst["cells"]["backbone"]["shared"] and len(sst["cells"]["backbone"]["per_seed"]) == 1
    assert row(ev, "lodo", "ag_news")["cells"]["backbone"]["seeds"] == [0, 1]
    # held-in: AG News is in the main mixture, not in the leave-one-out one
    assert row(ev, "main", "ag_news")["held_in"] and not row(ev, "lodo", "ag_news")["held_in"]
    assert not sst["held_in"] and sst["training_tasks"] == len(MIX)
    # the claim: differences of the cells, with intervals from the same replicates
    for r in ev["rows"]:
        for zl, d in r["diffs"].items():
            assert d["diff"] == pytest.approx(r["cells"][zl]["value"] - r["cells"]["mt"]["value"])
            assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    d = sst["diffs"]["zl_s2"]  # 600 vs 480 of 872: +13.8 points, far outside the noise
    assert d["ci_low"] > 0 and d["verdict"].startswith("above")
    assert sst["diffs"]["zl_s1"]["verdict"].startswith("not resolved")  # 470 vs 480: -1.1 points
    # paired over (seed, template): exactly ctr.analysis.stats.paired_effect on the accuracies
    xa = [100 * k / 872 for s in (0, 1) for k in data[(s, "main", "glue_sst2", "zl_s2")]]
    xb = [100 * k / 872 for s in (0, 1) for k in data[(s, "main", "glue_sst2", "mt")]]
    pe = paired_effect(xa, xb, 500, 0)
    got = d["paired_templates"]
    assert (got["diff"], got["ci_low"], got["ci_high"], got["pairs"]) == pytest.approx(
        (pe["diff"], pe["ci_low"], pe["ci_high"], 10))
    # pooled over the held-out rows only (SST-2, TREC, leave-one-out AG News for stage 1)
    pooled = ev["pooled_zero_label_minus_baseline"]
    held_out = [r for r in ev["rows"] if not r["held_in"]]
    assert pooled["zl_s1"]["tasks"] == 3 and pooled["zl_s2"]["tasks"] == 2
    assert pooled["zl_s1"]["diff"] == pytest.approx(statistics.mean(r["diffs"]["zl_s1"]["diff"] for r in held_out))


def test_markdown_and_json_carry_the_computed_numbers(tmp_path):
    data = standard_data()
    runs = fabricate(tmp_path / "runs", data)
    out = tmp_path / "out"
    ev = ce.main([str(runs), "--out", str(out), "--n-boot", "300"])
    md = (out / "evidence.md").read_text()
    js = json.loads((out / "evidence.json").read_text())
    for r in ev["rows"]:
        line = next(x for x in md.splitlines() if x.startswith("| ") and f"| {r['task']} |" in x
                    and ce.PAIR_TITLES[r["pair"]] in x)
        for col, cell in r["cells"].items():
            if cell:
                assert f"{cell['value']:.1f} [{cell['ci_low']:.1f}, {cell['ci_high']:.1f}]" in line
    assert "QUICK" not in md and "CTR zero-label >= the multi-task prompted baseline" in md
    assert "_reps" not in json.dumps(js)
    assert js["provenance"]["commit"] is None or len(js["provenance"]["commit"]) == 40
    assert set(js["provenance"]) >= {"commit", "dirty", "command", "hardware", "time", "versions"}
    assert js["inputs"]["seed0/main/glue_sst2/mt/results.json"]["commit"] == "f" * 40
    assert js["total_step_seconds"] == 1800
    # a changed input changes the table: nothing is hard-coded
    data2 = standard_data(shift=100)
    runs2 = fabricate(tmp_path / "runs2", data2)
    ev2 = ce.compile_evidence(runs2, args())
    mt1, mt2 = (row(e, "main", "glue_sst2")["cells"]["mt"]["value"] for e in (ev, ev2))
    assert mt2 - mt1 == pytest.approx(100 * 100 / 872)
    assert row(ev2, "main", "glue_sst2")["diffs"]["zl_s2"]["diff"] == pytest.approx(
        row(ev, "main", "glue_sst2")["diffs"]["zl_s2"]["diff"] - 100 * 100 / 872)


def test_agreement_is_the_mean_over_the_ranked_candidates(tmp_path):
    data = standard_data()
    agreements = {(0, "main", "glue_sst2", "zl_s1"): [0.9, 0.5, 0.7],  # mean 0.7
                  (1, "main", "glue_sst2", "zl_s1"): [1.0, 0.8]}  # mean 0.9
    runs = fabricate(tmp_path / "runs", data, agreements)
    ev = ce.compile_evidence(runs, args())
    a = row(ev, "main", "glue_sst2")["agreement"]["zl_s1"]
    assert [x["mean_agreement"] for x in a["per_seed"]] == pytest.approx([0.7, 0.9])
    assert a["mean_agreement"] == pytest.approx(0.8)
    assert [x["chosen_agreement"] for x in a["per_seed"]] == [0.9, 1.0]
    assert [x["candidates"] for x in a["per_seed"]] == [3, 2]


def test_a_cell_interval_is_the_bootstrap_of_the_stored_counts():
    k, n = 523, 872
    x = np.r_[np.ones(k), np.zeros(n - k)]  # the 0/1 vector the stored accuracy stands for
    _, lo, hi = bootstrap_ci(100 * x, n_boot=4000, seed=1)
    reps = ce.cell_replicates([{"t": (k, n)}], 4000, 2, "comonotone")
    lo2, hi2 = ce.interval(reps)
    assert lo2 == pytest.approx(lo, abs=0.5) and hi2 == pytest.approx(hi, abs=0.5)
    se = 100 * (k / n * (1 - k / n) / n) ** 0.5  # the binomial standard error, for scale
    assert (hi2 - lo2) == pytest.approx(2 * 1.96 * se, rel=0.1)
    # more examples, narrower; two seeds average out, so narrower too
    small = ce.interval(ce.cell_replicates([{"t": (60, 100)}], 2000, 3, "comonotone"))
    assert small[1] - small[0] > 2 * (hi2 - lo2)
    two = ce.interval(ce.cell_replicates([{"t": (k, n)}, {"t": (k, n)}], 4000, 4, "comonotone"))
    assert two[1] - two[0] < hi2 - lo2
    # five identical templates: under the comonotone coupling they move together (one
    # template's interval); drawn independently their median varies less
    five = {f"t{i}": (k, n) for i in range(5)}
    como = ce.interval(ce.cell_replicates([five], 4000, 5, "comonotone"))
    indep = ce.interval(ce.cell_replicates([five], 4000, 5, "independent"))
    assert como[1] - como[0] == pytest.approx(hi2 - lo2, rel=0.1)
    assert indep[1] - indep[0] < 0.8 * (como[1] - como[0])


def test_inconsistent_or_missing_inputs(tmp_path):
    rec = task_record("glue_sst2", spread(430))
    rec["templates"]["said"]["accuracy"] = 50.123  # no k of 872 gives this
    with pytest.raises(ValueError, match="not k/n"):
        ce.template_counts(rec, "x")
    with pytest.raises(SystemExit, match="no seedN"):
        ce.compile_evidence(tmp_path, args())
    # a column run for one seed only is reported as such, not averaged with nothing
    data = standard_data()
    del data[(1, "main", "glue_sst2", "zl_s1")]
    runs = fabricate(tmp_path / "runs", data, mode="quick")
    ev = ce.compile_evidence(runs, args())
    cell = row(ev, "main", "glue_sst2")["cells"]["zl_s1"]
    assert cell["seeds"] == [0] and cell["value"] == pytest.approx(expected_value(
        {k: v for k, v in data.items() if k[0] == 0}, "main", "glue_sst2", "zl_s1"))
    md = ce.markdown(ev)
    assert "QUICK" in md and "(1 of 2 seeds)" in md

