"""The evidence table (ctr.experiments.evidence*, the command of scripts/compile_evidence.py) on small
fabricated run folders, and the committed tables rebuilt from their archived inputs.

The fabricated files are committed results JSON of the real commands (`ctr eval`, `ctr
zero-label`, `ctr few-shot`, `ctr train`) with only their numbers replaced, laid out as
scripts/evidence_smollm2.sh writes them. Every expected number below is recomputed here from
the fabricated counts, so the table must follow its inputs.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from ctr.adapt.free_prompts import METHOD as FREE_PROMPTS, FreePromptConfig
from ctr.analysis.stats import bootstrap_ci, paired_effect
from ctr.experiments import evidence as ce
from ctr.experiments import evidence_bootstrap as eb
from ctr.experiments import evidence_command as command
from ctr.experiments import evidence_report as report

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
        elif col in ("zl_s1", "zl_free", "zl_s2"):
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
            if (r["pair"] == "lodo" and col == "zl_s2") or col == "zl_free":
                assert cell is None  # no stage 2 in the leave-one-out pair; no free prompts here
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
    ev = command.main([str(runs), "--out", str(out), "--n-boot", "300"])
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
    assert "(unfinished)" not in md  # every fabricated run has final/; one without is marked
    shutil.rmtree(runs / "seed1" / "main" / "mt" / "final")
    md = report.markdown(ce.compile_evidence(runs, args()))
    assert sum("(unfinished)" in x for x in md.splitlines()) == 1
    assert next(x for x in md.splitlines() if "(unfinished)" in x).startswith("| 1 | main | mt ")
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
    reps = eb.cell_replicates([{"t": (k, n)}], 4000, 2, "comonotone")
    lo2, hi2 = eb.interval(reps)
    assert lo2 == pytest.approx(lo, abs=0.5) and hi2 == pytest.approx(hi, abs=0.5)
    se = 100 * (k / n * (1 - k / n) / n) ** 0.5  # the binomial standard error, for scale
    assert (hi2 - lo2) == pytest.approx(2 * 1.96 * se, rel=0.1)
    # more examples, narrower; two seeds average out, so narrower too
    small = eb.interval(eb.cell_replicates([{"t": (60, 100)}], 2000, 3, "comonotone"))
    assert small[1] - small[0] > 2 * (hi2 - lo2)
    two = eb.interval(eb.cell_replicates([{"t": (k, n)}, {"t": (k, n)}], 4000, 4, "comonotone"))
    assert two[1] - two[0] < hi2 - lo2
    # five identical templates: under the comonotone coupling they move together (one
    # template's interval); drawn independently their median varies less
    five = {f"t{i}": (k, n) for i in range(5)}
    como = eb.interval(eb.cell_replicates([five], 4000, 5, "comonotone"))
    indep = eb.interval(eb.cell_replicates([five], 4000, 5, "independent"))
    assert como[1] - como[0] == pytest.approx(hi2 - lo2, rel=0.1)
    assert indep[1] - indep[0] < 0.8 * (como[1] - como[0])


def test_inconsistent_or_missing_inputs(tmp_path):
    rec = task_record("glue_sst2", spread(430))
    rec["templates"]["said"]["accuracy"] = 50.123  # no k of 872 gives this
    with pytest.raises(ValueError, match="not k/n"):
        eb.template_counts(rec, "x")
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
    md = report.markdown(ev)
    assert "QUICK" in md and "(1 of 2 seeds)" in md



# ---- per-example outcomes ("indices", "correct" per template): the paired bootstrap ----------------
def outcome_bits(n: int, right: int, extra=()) -> str:
    """'0'/'1' per example: right on the first `right` examples and on those in `extra`."""
    b = np.zeros(n, dtype=int)
    b[:right] = 1
    b[list(extra)] = 1
    return "".join(map(str, b))


def with_outcomes(path: Path, task: str, bits: list[str], indices=None) -> None:
    """Add the per-example fields `ctr eval` writes now to the templates of a fabricated
    results.json (whose accuracies are already the share of '1' in `bits`)."""
    res = json.loads(path.read_text())
    for t, b in zip(res["tasks"][task]["templates"].values(), bits):
        t.update(indices=list(range(len(b)) if indices is None else indices), correct=b)
    write(path, res)


FLIPS = range(800, 812)  # the zero-label column is right on these 12 examples more than the baseline


def paired_runs(root: Path, per_example=("mt", "zl_s1"), zl_from: int = 0) -> Path:
    """SST-2, two seeds: the baseline right on the first 480..520 examples (one count per
    template), zero-label right on the same ones and FLIPS: +1.4 points. zl_from > 0: zero-label
    scored only examples zl_from.. (the others kept out, as selection examples are)."""
    n = N["glue_sst2"]
    bits = {"mt": [outcome_bits(n, k) for k in spread(480)],
            "zl_s1": [outcome_bits(n, k, FLIPS)[zl_from:] for k in spread(480)]}
    ks = {col: [b.count("1") for b in bs] for col, bs in bits.items()}
    data = {(s, "main", "glue_sst2", col): ks[col] for s in (0, 1) for col in bits}
    runs = fabricate(root, data)
    for s in (0, 1):
        for col in per_example:
            f = runs / f"seed{s}/main/glue_sst2/{col}/results.json"
            if col == "zl_s1" and zl_from:  # fabricate's n is N; this column scored fewer
                res = json.loads(f.read_text())
                rec = res["tasks"]["glue_sst2"]
                for t, k in zip(rec["templates"].values(), ks[col]):
                    t.update(n=n - zl_from, accuracy=round(100 * k / (n - zl_from), 2))
                rec["median"] = round(statistics.median(100 * k / (n - zl_from) for k in ks[col]), 2)
                write(f, res)
            with_outcomes(f, "glue_sst2", bits[col], range(zl_from, n) if col == "zl_s1" else None)
    return runs


def width(x: dict) -> float:
    return x["ci_high"] - x["ci_low"]


def test_per_example_outcomes_pair_the_difference_over_examples(tmp_path):
    ev = ce.compile_evidence(paired_runs(tmp_path / "paired"), args())
    old = ce.compile_evidence(paired_runs(tmp_path / "old", per_example=()), args())
    cells, cells_old = (row(e, "main", "glue_sst2")["cells"] for e in (ev, old))
    d, d_old = (row(e, "main", "glue_sst2")["diffs"]["zl_s1"] for e in (ev, old))
    assert d["diff"] == pytest.approx(d_old["diff"]) and d["diff"] == pytest.approx(100 * 12 / 872)
    # unpaired (binomial, columns drawn independently): +1.4 points is inside the noise
    assert d_old["bootstrap"] == "unpaired: " + eb.BINOMIAL and cells_old["mt"]["bootstrap"] == eb.BINOMIAL
    assert d_old["ci_low"] < 0 < d_old["ci_high"] and d_old["verdict"].startswith("not resolved")
    # paired: both columns are drawn on the same examples, only the 12 FLIPS differ
    assert d["bootstrap"] == eb.PAIRED and cells["mt"]["bootstrap"] == cells["zl_s1"]["bootstrap"] == eb.EXAMPLES
    assert 0 < d["ci_low"] <= d["diff"] <= d["ci_high"] and d["verdict"].startswith("above")
    assert width(d) < 0.3 * width(d_old)
    # the difference is made of the cells' own replicates: each cell alone stays a plain bootstrap
    # over its examples, about as wide as the binomial one
    np.testing.assert_array_equal(d["_reps"], cells["zl_s1"]["_reps"] - cells["mt"]["_reps"])
    for col in ("mt", "zl_s1"):
        assert cells[col]["value"] == pytest.approx(cells_old[col]["value"])
        assert width(cells[col]) == pytest.approx(width(cells_old[col]), rel=0.25)
    # the reader is told which bootstrap was used; nothing of the outcomes goes to the JSON
    md, md_old = report.markdown(ev), report.markdown(old)
    assert "2 of 2 cells resample examples" in md and "binomial" not in md.split("## The paper")[0]
    assert "2 of 2 cells come from results.json that store per template only k correct of n" in md_old
    assert any(eb.PAIRED in x and "glue_sst2" in x for x in md.splitlines())
    assert '"_outcomes":' not in json.dumps(ce.strip(ev))


def test_partly_shared_or_missing_outcomes_fall_back(tmp_path):
    # zero-label kept the first 20 examples out: paired on the 852 both scored, at each seed
    ev = ce.compile_evidence(paired_runs(tmp_path / "part", zl_from=20), args())
    d = row(ev, "main", "glue_sst2")["diffs"]["zl_s1"]
    assert d["bootstrap"] == "partly paired examples (1704 of 1744 scored by both at the same seed)"
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    # one column without per-example outcomes: the binomial bootstrap for it, an unpaired difference
    ev = ce.compile_evidence(paired_runs(tmp_path / "mixed", per_example=("mt",)), args())
    r = row(ev, "main", "glue_sst2")
    assert (r["cells"]["mt"]["bootstrap"], r["cells"]["zl_s1"]["bootstrap"]) == (eb.EXAMPLES, eb.BINOMIAL)
    assert r["diffs"]["zl_s1"]["bootstrap"] == "unpaired: " + eb.BINOMIAL
    md = report.markdown(ev)
    assert "1 of 2 cells resample examples" in md and "1 of 2 cells come from" in md


def test_inconsistent_per_example_outcomes_name_the_file(tmp_path):
    runs = paired_runs(tmp_path / "runs")
    f = runs / "seed1/main/glue_sst2/mt/results.json"
    good = json.loads(f.read_text())

    def broken(change) -> str:
        res = copy.deepcopy(good)
        change(res["tasks"]["glue_sst2"]["templates"]["review"])  # 510 of 872 right
        write(f, res)
        with pytest.raises(ValueError) as e:
            ce.compile_evidence(runs, args())
        assert str(f) in str(e.value) and "'review'" in str(e.value)
        return str(e.value)

    assert "509 of 872" in broken(lambda t: t.update(correct=t["correct"].replace("1", "0", 1)))
    assert "871 outcomes" in broken(lambda t: t.update(correct=t["correct"][:-1]))
    assert "871 indices" in broken(lambda t: t.update(indices=t["indices"][:-1]))
    assert "871 distinct" in broken(lambda t: t.update(indices=[1] + t["indices"][1:]))
    assert "outcomes ('0'/'1')" in broken(lambda t: t.update(correct=t["correct"].replace("0", "x", 1)))
    # a template without the fields: that run falls back to the binomial bootstrap
    res = copy.deepcopy(good)
    del res["tasks"]["glue_sst2"]["templates"]["review"]["correct"]
    write(f, res)
    cell = row(ce.compile_evidence(runs, args()), "main", "glue_sst2")["cells"]["mt"]
    assert cell["bootstrap"] == f"mixed: seed 0 {eb.EXAMPLES}; seed 1 {eb.BINOMIAL}"


def test_a_difference_compares_the_seeds_both_columns_scored(tmp_path):
    """A column still missing at one seed: its difference to the baseline is taken over the
    seed both have, not a one-seed mean minus a two-seed mean, and the table says so."""
    data = standard_data()
    del data[(1, "main", "glue_sst2", "zl_s2")]
    runs = fabricate(tmp_path / "runs", data)
    ev = ce.compile_evidence(runs, args())
    r = row(ev, "main", "glue_sst2")
    assert r["cells"]["zl_s2"]["seeds"] == [0] and r["cells"]["mt"]["seeds"] == [0, 1]
    seed0 = {c: statistics.median(100 * k / N["glue_sst2"] for k in data[(0, "main", "glue_sst2", c)])
             for c in ("zl_s2", "mt")}
    d = r["diffs"]["zl_s2"]
    assert d["seeds"] == [0] and d["diff"] == pytest.approx(seed0["zl_s2"] - seed0["mt"])
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    assert r["diffs"]["zl_s1"]["seeds"] == [0, 1]  # complete columns: both seeds
    md = report.markdown(ev)
    assert sum("(seed 0 only)" in x for x in md.splitlines()) == 1


def test_stage_one_is_compared_with_its_free_prompt_ceiling(tmp_path):
    data = standard_data()
    for s in (0, 1):  # free prompts: 520 + 7s per template (s1: 470 + 7s, backbone 430)
        data[(s, "main", "glue_sst2", "zl_free")] = spread(520 + 7 * s)
    runs = fabricate(tmp_path / "runs", data)
    free = runs / "seed0/main/free"  # what `ctr free-prompts` writes: its options and metrics, final/
    write(free / "train_config.json", {**dataclasses.asdict(FreePromptConfig(
        model="smollm2", seed=0, steps=100, batch_size=8, lr=0.01, tasks=MIX)), "method": FREE_PROMPTS})
    losses = [5.0 - 0.1 * i for i in range(15)]
    (free / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "lm_loss": x, "lr": 0.01,
                                                            "step_time": 2.0}) + "\n"
                                                for i, x in enumerate(losses)))
    (free / "final").mkdir()
    ev = ce.compile_evidence(runs, args())
    t = next(t for t in ev["training"] if t["run"] == "free")
    assert (t["seed"], t["pair"], t["kind"], t["tasks"], t["steps"], t["batch_size"], t["lr"]) == (
        0, "main", "per-task prompts, the ceiling", MIX, 100, 8, 0.01)
    assert t["lm_loss_last10"] == pytest.approx(statistics.mean(losses[-10:]))
    assert t["train_seconds"] == 30.0 and t["finished"] and t["values_in_use"] is None
    assert t["stage"] == 1 and t["no_codes"] is None
    assert [(r["pair"], r["task"]) for r in ev["rows"]] == [
        ("main", "ag_news"), ("main", "glue_sst2"), ("main", "trec"), ("lodo", "ag_news")]
    sst = row(ev, "main", "glue_sst2")
    cells = sst["cells"]
    assert cells["zl_free"]["value"] == pytest.approx(expected_value(data, "main", "glue_sst2", "zl_free"))
    up, gap = sst["ceiling"]["free_minus_backbone"], sst["ceiling"]["s1_minus_free"]
    assert up["diff"] == pytest.approx(cells["zl_free"]["value"] - cells["backbone"]["value"])
    assert gap["diff"] == pytest.approx(cells["zl_s1"]["value"] - cells["zl_free"]["value"])
    assert up["verdict"] == "above the backbone (interval above 0)"
    assert gap["verdict"] == "below the free-prompt ceiling, zero-label (interval below 0)"
    assert row(ev, "main", "trec")["ceiling"] == {}  # no free-prompt run there
    assert sst["agreement"]["zl_free"]["mean_agreement"] == pytest.approx(0.8)
    md = report.markdown(ev)
    line = next(x for x in md.splitlines() if "CTR stage-1 zero-label - free-prompt ceiling" in x)
    assert f"{gap['diff']:+.1f} [{gap['ci_low']:+.1f}, {gap['ci_high']:+.1f}]" in line
    assert "| main | glue_sst2 | free prompts | 0.800 |" in md
    # what training moved: every trained column against the bare LM, where both were scored
    for name, (col, _) in ce.VS_BACKBONE.items():
        d = sst["vs_backbone"][name]
        assert d["diff"] == pytest.approx(cells[col]["value"] - cells["backbone"]["value"]), name
    assert set(row(ev, "lodo", "ag_news")["vs_backbone"]) == {"mt_minus_backbone", "s1_minus_backbone"}
    d = sst["vs_backbone"]["s1_minus_backbone"]
    line = next(x for x in md.splitlines() if x.startswith("| main | glue_sst2 | CTR stage-1 zero-label - backbone"))
    assert f"{d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] | {d['verdict']}" in line


def test_training_rows_carry_the_codebook_health(tmp_path):
    runs = fabricate(tmp_path / "runs", standard_data())
    logged = [json.loads(x) for x in COMMITTED["metrics"].read_text().splitlines()[-12:]]
    (runs / "seed0/main/mt/metrics.jsonl").write_text(  # a run without codes logs no code values
        "\n".join(json.dumps({k: v for k, v in m.items() if k != "distinct_values"}) for m in logged) + "\n")
    ev = ce.compile_evidence(runs, args())
    s1 = next(t for t in ev["training"] if (t["seed"], t["pair"], t["run"]) == (0, "main", "s1"))
    assert (s1["vq_first"], s1["vq_last"], s1["values_in_use"]) == (
        logged[0]["vq_loss"], logged[-1]["vq_loss"], logged[-1]["distinct_values"])
    mt = next(t for t in ev["training"] if (t["seed"], t["pair"], t["run"]) == (0, "main", "mt"))
    assert mt["vq_first"] is None and mt["values_in_use"] is None
    md = report.markdown(ev)
    assert f"| {logged[0]['vq_loss']:.4f} -> {logged[-1]['vq_loss']:.4f} | {logged[-1]['distinct_values']} |" in md


def test_the_archive_rebuilds_the_table_without_weights(tmp_path):
    runs = fabricate(tmp_path / "runs", standard_data())
    for final in runs.rglob("final"):  # as `ctr train` leaves a run: config and weights, checkpoints
        (final / "ctr_config.json").write_text("{}")
        (final / "ctr_weights.safetensors").write_bytes(b"\0" * 64)
        (final / "backbone").mkdir()  # a stage-2 model saves its LM beside the CTR weights
        (final / "backbone" / "tokenizer.json").write_text("{}")
        (final.parent / "checkpoint-50").mkdir()
        (final.parent / "checkpoint-50" / "trainer_state.json").write_text("{}")
    ev = command.main([str(runs), "--out", str(tmp_path / "out"), "--n-boot", "300",
                      "--archive", str(tmp_path / "archive")])
    kept = {p.relative_to(tmp_path / "archive") for p in (tmp_path / "archive").rglob("*") if p.is_file()}
    assert not any(p.suffix == ".safetensors" or "checkpoint-50" in p.parts for p in kept)
    assert not any(p.name == "tokenizer.json" for p in kept)  # the LM's files are not the table's
    assert any(p.parts[0] == "backbone" for p in kept)  # the bare backbone's scores are
    assert Path("MODE") in kept and Path("timings.tsv") in kept
    assert Path("seed0/main/s1/final/ctr_config.json") in kept  # marks the run finished
    again = command.main([str(tmp_path / "archive"), "--out", str(tmp_path / "out2"), "--n-boot", "300"])
    for key in ("rows", "training", "timings", "pooled_zero_label_minus_baseline", "inputs"):
        assert json.dumps(ce.strip(again[key])) == json.dumps(ce.strip(ev[key])), key
    with pytest.raises(SystemExit):  # an archive inside RUNS would archive itself next time
        command.main([str(runs), "--out", str(tmp_path / "out3"), "--archive", str(runs / "archive")])


# Committed tables whose inputs are archived beside them: (table folder, inputs folder).
ARCHIVED_TABLES = [(ROOT / "results/evidence/cpu_lodo", ROOT / "results/evidence/cpu_lodo/inputs")]


def comparable(md: str) -> list[str]:
    """evidence.md without what a rebuild changes by construction: the compile time and commit
    (last line) and the RUNS folder named in the "Built by" sentence."""
    out = []
    for line in md.splitlines():
        if line.startswith("Compiled "):
            continue
        if "compile_evidence.py " in line:
            line = line[:line.index("compile_evidence.py ")]
        out.append(line)
    return out


@pytest.mark.parametrize("table, inputs", ARCHIVED_TABLES, ids=lambda p: p.name)
def test_a_committed_table_rebuilds_from_its_archived_inputs(table, inputs, tmp_path):
    if not inputs.is_dir():
        pytest.skip(f"{inputs}: no archived inputs")
    command.main([str(inputs), "--out", str(tmp_path)])  # the table's own settings (defaults)
    assert comparable((tmp_path / "evidence.md").read_text()) == comparable((table / "evidence.md").read_text())
    rebuilt, committed = (json.loads((d / "evidence.json").read_text()) for d in (tmp_path, table))
    for key in ("rows", "training", "timings", "pooled_zero_label_minus_baseline", "seeds", "columns"):
        assert rebuilt[key] == committed[key], key
