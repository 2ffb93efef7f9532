"""Every result records where it came from: git commit, command line, hardware and time."""
from __future__ import annotations

import datetime
import json
import re
import subprocess

import pytest

from ctr import provenance as prov_mod
from ctr.provenance import command_as, command_line, git_state, hardware_tag, provenance


def test_command_line_is_shell_quoted_and_recordable():
    assert command_line(["ctr", "eval", "--tasks", "a b", "--code", "1,2"]) == \
        "ctr eval --tasks 'a b' --code 1,2"
    with command_as(["ctr", "audit", "--tasks", "x's"]):
        assert provenance()["command"] == "ctr audit --tasks 'x'\"'\"'s'"
    assert command_line() == command_line(None)  # restored: sys.argv again


def test_no_git_checkout_gives_none_and_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    assert git_state(tmp_path / "missing") == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program at all
    assert git_state() == {"commit": None, "dirty": None}
    monkeypatch.setattr(prov_mod, "SOURCE_ROOT", tmp_path)
    p = provenance(["ctr", "eval"])
    assert p["commit"] is None and p["dirty"] is None and p["command"] == "ctr eval"


def test_commit_of_this_checkout():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=prov_mod.SOURCE_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    state = git_state()
    assert state["commit"] == head and isinstance(state["dirty"], bool)


def test_a_commit_made_during_a_run_is_not_credited_with_its_result(monkeypatch):
    now = git_state()
    if now["commit"] is None:
        pytest.skip("not a git checkout")
    started = {"commit": "0" * 40, "dirty": False}  # what the process imported
    monkeypatch.setattr(prov_mod, "_AT_IMPORT", (prov_mod.SOURCE_ROOT, started))
    p = provenance(["ctr", "eval"])
    assert (p["commit"], p["dirty"], p["at_end"]) == ("0" * 40, False, now)
    monkeypatch.setattr(prov_mod, "_AT_IMPORT", (prov_mod.SOURCE_ROOT, now))
    assert "at_end" not in provenance() and provenance()["commit"] == now["commit"]


def test_provenance_fields():
    p = provenance(["ctr", "eval"])
    assert set(p) == {"commit", "dirty", "command", "hardware", "time", "versions"}
    assert p["hardware"]["threads"] >= 1 and p["hardware"]["cpu"]
    assert datetime.datetime.fromisoformat(p["time"]).utcoffset() == datetime.timedelta(0)
    assert p["versions"]["python"] and p["versions"]["torch"] and p["versions"]["transformers"]
    assert re.fullmatch(r"[a-z0-9]+", hardware_tag())
    json.dumps(p)  # goes into results JSON as it is


def test_ctr_eval_result_records_commit_command_hardware_and_time(tiny_paths, tmp_path):
    from ctr.cli import main
    from ctr.tasks.mixture import data_dir
    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"held-out data not available: {e}")
    argv = ["eval", "--model", str(tiny_paths["llama"]), "--tasks", "super_glue_cb", "--max-examples", "4",
            "--max-templates", "1", "--batch-size", "4", "--output-dir", str(tmp_path / "out")]
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    assert main(argv) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    p = res["provenance"]
    assert p["command"] == command_line(["ctr", *argv])
    assert p["commit"] == git_state()["commit"] and "dirty" in p
    assert p["hardware"]["threads"] >= 1 and p["hardware"] == {**res["hardware"], **p["hardware"]}
    assert before <= datetime.datetime.fromisoformat(p["time"]) <= datetime.datetime.now(datetime.timezone.utc)


@pytest.mark.parametrize("name, tag", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("Some GPU", "gpu")])
def test_hardware_tag_names_the_gpu(monkeypatch, name, tag):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    assert hardware_tag() == tag
    assert prov_mod.hardware()["gpu"] == name
