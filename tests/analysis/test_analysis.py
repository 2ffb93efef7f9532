"""Code analysis: statistics on a hand-made code table with known answers, the steering
helpers, and `ctr analyze` (+ --steer) on a tiny trained checkpoint."""
from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ctr.analysis.stats as stats_module
from ctr.analysis.stats import (analyze_table, average_linkage, bootstrap_ci, concentrated_values,
                                contingency, hamming_matrix, label_values, mutual_information,
                                nearest_codes, paired_effect, perplexity, position_association,
                                purity, type_distance_summary, usage_counts)
from ctr.analysis.steering import in_choices, random_controls, steer_positions
from ctr.cli import main
from ctr.config import TrainConfig
from ctr.train.trainer import train

# Two "qa" tasks (A1, A2) and three "sum" tasks (B1, B2, C1), deliberately interleaved.
NAMES = ["B1", "A1", "C1", "A2", "B2"]
CODES = np.array([[5, 6, 2], [0, 1, 2], [5, 7, 4], [0, 1, 3], [5, 6, 3]])
TYPES = ["sum", "qa", "sum", "qa", "sum"]
H_TYPE = -(0.4 * math.log2(0.4) + 0.6 * math.log2(0.6))  # 0.971 bits


def test_usage_perplexity_and_dead_values():
    counts = usage_counts(CODES, 8)
    assert counts.shape == (3, 8)
    assert counts[0].tolist() == [2, 0, 0, 0, 0, 3, 0, 0]
    assert counts[2].tolist() == [0, 0, 2, 2, 1, 0, 0, 0]
    assert perplexity(counts[0]) == pytest.approx(2 ** H_TYPE)
    assert perplexity([5, 0, 0]) == pytest.approx(1.0)
    assert perplexity([1, 1, 1, 1]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        usage_counts(CODES, 4)


def test_purity_and_mutual_information_known_answers():
    assoc = position_association(CODES, TYPES)
    # position 0 separates the types with one value each: MI = H(type), NMI 1
    assert assoc[0]["purity"] == 1.0
    assert assoc[0]["mi_bits"] == pytest.approx(H_TYPE)
    assert assoc[0]["nmi"] == pytest.approx(1.0)
    # position 1 also separates them, but splits "sum" over two values: NMI < 1
    h_v = -(2 * 0.4 * math.log2(0.4) + 0.2 * math.log2(0.2))
    assert assoc[1]["purity"] == 1.0
    assert assoc[1]["mi_bits"] == pytest.approx(H_TYPE)
    assert assoc[1]["nmi"] == pytest.approx(H_TYPE / ((H_TYPE + h_v) / 2))
    # position 2: values 2 and 3 are half qa, half sum; value 4 is one sum task
    assert assoc[2]["purity"] == pytest.approx(3 / 5)
    assert assoc[2]["mi_bits"] == pytest.approx(H_TYPE - 0.8)
    names, vals, table = contingency(TYPES, CODES[:, 2])
    assert names == ["qa", "sum"] and vals == [2, 3, 4]
    assert table.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert purity(table) == pytest.approx(0.6)
    # independent labels give MI 0; a trivial partition is NMI 1 (as sklearn)
    assert mutual_information(np.array([[2, 2], [2, 2]]))[0] == pytest.approx(0.0)
    assert mutual_information(np.array([[4]])) == (0.0, 1.0)


def test_permutation_chance_level():
    assoc = position_association(CODES, TYPES, permutations=300, seed=0)
    # a random relabelling rarely separates the types perfectly (1 of 10 labelings does)
    assert 0 < assoc[0]["mi_chance_bits"] < assoc[0]["mi_bits"]
    assert assoc[0]["mi_p_value"] < 0.25
    assert assoc[2]["mi_p_value"] > 0.5
    again = position_association(CODES, TYPES, permutations=300, seed=0)
    assert again == assoc  # seeded


def test_concentrated_values_known_answers():
    found = concentrated_values(CODES, TYPES, min_count=2)
    assert [(a.position, a.value, a.label, a.label_count, a.count) for a in found] == [
        (0, 5, "sum", 3, 3),  # 3 of 3: score 3/4 beats 2 of 2 (2/3)
        (0, 0, "qa", 2, 2), (1, 1, "qa", 2, 2),  # qa's lift (1 / 0.4) beats sum's (1 / 0.6)
        (1, 6, "sum", 2, 2),
    ]  # position 2: 50/50 values are not concentrated; value 4 has one task (< min_count)
    assert found[0].describe() == ("value 5 at position 0: 3 of 3 tasks using it are sum "
                                   "(100%; 60% of all tasks), and 3 of the 3 sum tasks use it")
    assert concentrated_values(CODES, TYPES, min_count=1)[0].value == 5
    assert not concentrated_values(CODES, ["unknown"] * 5)  # unknown types are not meanings


def test_label_values_pick_the_most_specific_value():
    best = label_values(CODES, TYPES, "sum")
    assert [b.value for b in best] == [5, 6, 4]  # pos 2: value 4 is sum-only, 2 and 3 are 50/50
    assert label_values(CODES, TYPES, "other") == [None, None, None]


def test_hamming_distances_and_average_linkage():
    d = hamming_matrix(CODES)
    assert d.tolist() == [[0, 2, 2, 3, 1], [2, 0, 3, 1, 3], [2, 3, 0, 3, 2],
                          [3, 1, 3, 0, 2], [1, 3, 2, 2, 0]]
    merges, order = average_linkage(d)
    # B1+B2 (1), A1+A2 (1), then C1 joins the B pair at mean(2, 2), then the A pair joins
    # at the mean of the six cross distances (2+3+3 + 3+2+3) / 6 = 8/3
    assert merges == [(0, 4, 1.0, 2), (1, 3, 1.0, 2), (5, 2, 2.0, 3), (7, 6, pytest.approx(8 / 3), 5)]
    assert [NAMES[i] for i in order] == ["B1", "B2", "C1", "A1", "A2"]
    assert average_linkage(np.zeros((1, 1))) == ([], [0])
    summary = {r["label"]: r for r in type_distance_summary(d, TYPES)}
    assert summary["qa"]["mean_within"] == 1.0
    assert summary["sum"]["mean_within"] == pytest.approx(5 / 3)
    assert summary["qa"]["mean_to_others"] == pytest.approx(16 / 6)
    assert nearest_codes([0, 1, 4], CODES, NAMES, k=2) == [("A1", 1), ("A2", 1)]


def test_analyze_table_bundles_the_statistics():
    datasets = ["b", "a", "c", "a", "b"]
    s = analyze_table(NAMES, CODES, TYPES, datasets, 8, min_count=2, permutations=10)
    assert s["distinct_codes"] == 5 and s["values_never_used"] == 0  # 0..7 all appear somewhere
    assert s["positions"][0]["dead_values"] == 6 and s["positions"][0]["usage"] == {0: 2, 5: 3}
    assert s["positions"][0]["type"]["purity"] == 1.0
    assert s["positions"][0]["dataset"]["purity"] == pytest.approx(4 / 5)
    assert s["cluster_order"] == ["B1", "B2", "C1", "A1", "A2"]
    assert s["type_specific_values"][0]["text"].startswith("value 5 at position 0: 3 of 3")


def test_bootstrap_and_steering_helpers():
    assert bootstrap_ci([2.0] * 10, 100) == (2.0, 2.0, 2.0)
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 0.5, size=200)
    mean, lo, hi = bootstrap_ci(x, 500, seed=1)
    assert lo < mean < hi and lo > 0.8 and hi < 1.2
    assert bootstrap_ci(x, 500, seed=1) == (mean, lo, hi)
    e = paired_effect([3, 4, 5], [1, 2, 3], 200, 0)
    assert e["diff"] == pytest.approx(2.0) and e["ci_low"] == e["ci_high"] == pytest.approx(2.0)
    assert in_choices(" Yes ", ["yes", "no"]) == 1.0 and in_choices("maybe", ["yes"]) == 0.0
    assert in_choices("x", None) is None
    code = [0, 1, 2]
    controls = random_controls(code, [1, 2], 4, 50, np.random.default_rng(0))
    assert all(c[0] == 0 and c[1] != 1 and c[2] != 2 and max(c) < 4 for c in controls)
    assert {c[1] for c in controls} == {0, 2, 3}  # every other value is drawn
    best = label_values(CODES, TYPES, "sum")  # values 5, 6, 4
    assert steer_positions([0, 1, 2], best, 1) == [0]  # 5 at position 0 is the most specific
    assert steer_positions([5, 1, 2], best, 1) == [1]  # position 0 already holds it
    assert steer_positions([5, 1, 2], best, 2, fixed=[2, 0]) == [0, 2]


def test_stats_imports_only_numpy_and_the_standard_library():
    """stats.py stays pure: its own imports name no ctr module and no torch, and executed
    alone (outside the package, whose __init__ loads the model) it loads neither."""
    path = Path(stats_module.__file__)
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports in stats.py"
            tops.add(node.module.split(".")[0])
    assert tops - {"numpy"} <= set(sys.stdlib_module_names), tops
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('stats_alone', {str(path)!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['stats_alone'] = m\n"
            "spec.loader.exec_module(m)\n"
            "assert m.mutual_information(m.contingency(['a', 'b'], [0, 1])[2])[1] == 1.0\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in "
            "('ctr', 'torch', 'transformers', 'matplotlib')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def tiny_run(tiny_paths, tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    task_file = root / "tasks.jsonl"
    words = ["cat", "dog", "sun", "tree", "blue", "fish"]
    with open(task_file, "w") as f:  # four tasks, each a fixed word transform (few answers)
        for t, fn in enumerate([str.upper, lambda w: w[::-1], lambda w: w + w, str.title]):
            for w in words:
                f.write(json.dumps({"task": f"task{t}", "input": f"word: {w}", "target": fn(w)}) + "\n")
    cfg = TrainConfig.from_flags(output_dir=str(root / "run"), model=str(tiny_paths["llama"]), preset="tiny",
                                 train_files=[str(task_file)], code_length=4, codebook_size=8,
                                 max_source_len=32, max_target_len=8,
                                 kmeans_init=True)  # 6 tiny steps from the plain init give 4 equal codes
    train(cfg)
    return root


def test_cli_analyze_writes_report_and_figures(tiny_run, tmp_path):
    out = tmp_path / "an"
    types = tmp_path / "types.json"
    types.write_text(json.dumps({"task0": "summarization", "task1": "sentiment",
                                 "task2": "sentiment", "task3": "summarization"}))
    adapted = tmp_path / "codes.json"
    adapted.write_text(json.dumps({"super_glue_rte": [0, 1, 2, 3]}))
    rc = main(["analyze", str(tiny_run / "run"), "--output-dir", str(out), "--types-file", str(types),
               "--codes-file", str(adapted), "--permutations", "20", "--steer", "--steer-inputs", "3",
               "--steer-random", "2", "--steer-max-new-tokens", "5", "--bootstrap", "50"])
    assert rc == 0
    res = json.loads((out / "analysis.json").read_text())
    table = json.loads((tiny_run / "run" / "final" / "code_table.json").read_text())
    assert [t["code"] for t in res["tasks"]] == list(table.values())
    assert len({tuple(c) for c in table.values()}) == 4, "the fixture needs distinct codes"
    assert [t["type"] for t in res["tasks"]] == ["summarization", "sentiment", "sentiment",
                                                "summarization"]
    assert len(res["statistics"]["positions"]) == 4
    for p in res["statistics"]["positions"]:
        assert sum(p["usage"].values()) == 4 and p["dead_values"] == 8 - len(p["usage"])
    assert sorted(res["statistics"]["cluster_order"]) == sorted(table)
    assert res["adapted"]["super_glue_rte"]["type"] == "natural_language_inference"
    for png in ("code_values_by_type.png", "task_distances.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "analysis.md").read_text()
    assert "## Usage and association per position" in md and "super_glue_rte" in md
    steer = res["steering"]
    assert steer["type"] == "summarization" and set(steer["tasks"]) <= {"task1", "task2"}
    assert steer["tasks"], "default tasks: those with answer choices and another type"
    for r in steer["tasks"].values():
        assert r["n_inputs"] == 3 and len(r["random_codes"]) == 2 and r["choices_known"]
        for metric in ("length", "answer_format"):
            e = r["effects"][metric]["steered_vs_random"]
            assert e["ci_low"] <= e["diff"] <= e["ci_high"]
        assert all(r["steered_code"][p] != r["code"][p] for p in r["positions"])
    outputs = json.loads((out / "steering_outputs.json").read_text())
    assert {o["kind"] for o in outputs} >= {"original", "steered", "random_0", "random_1"}
    assert "## Steering toward summarization" in md


def test_cli_analyze_errors(tiny_run, tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path)]) == 2
    assert "not a CTR checkpoint" in capsys.readouterr().err
    bad = tmp_path / "codes.json"
    bad.write_text(json.dumps({"t": [0, 1, 99, 0]}))
    assert main(["analyze", str(tiny_run / "run"), "--codes-file", str(bad),
                 "--output-dir", str(tmp_path / "o"), "--permutations", "0"]) == 2
    assert "[0, 8)" in capsys.readouterr().err
    assert main(["analyze", str(tiny_run / "run"), "--steer", "--steer-type", "poetry",
                 "--output-dir", str(tmp_path / "o"), "--permutations", "0"]) == 2
    assert "no training task has this type" in capsys.readouterr().err
