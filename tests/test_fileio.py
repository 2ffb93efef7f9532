"""Crash safety of ctr.fileio: truncated JSONL lines, atomic folders, unique temp names."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

import ctr.fileio as fileio
from ctr.fileio import atomic_dir, complete_dir, read_jsonl

L, K = 4, 8


def cut_last_line(path: Path) -> None:
    """What a kill in the middle of append_jsonl leaves: half of the last line, no newline."""
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    path.write_text(text[: len(text) - len(last) - 1] + last[: len(last) // 2])


def test_read_jsonl_drops_only_a_truncated_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": [1, 2')
    with pytest.warns(RuntimeWarning, match=r"log\.jsonl:3"):
        assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert p.read_text().endswith("[1, 2")  # reading alone changes nothing
    with pytest.warns(RuntimeWarning):
        read_jsonl(p, repair=True)
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'
    p.write_text('{"a": 1}\n{"a": 2}')  # complete record, newline cut off: kept, newline restored
    assert read_jsonl(p, repair=True) == [{"a": 1}, {"a": 2}]
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_corrupt_middle_line_is_a_clear_error(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: corrupt JSON line"):
        read_jsonl(p)


TARGET = [3, 7, 0, 5]


# ---- atomic folders --------------------------------------------------------------------
def fill(folder: Path, tag: str, n: int = 3) -> None:
    for i in range(n):
        (folder / f"f{i}").write_text(tag)


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_atomic_dir_crash_inside_the_block_keeps_the_old_folder(tmp_path):
    target = tmp_path / "final"
    with atomic_dir(target) as t:
        fill(t, "old")
    with pytest.raises(RuntimeError), atomic_dir(target) as t:
        fill(t, "new", 2)
        raise RuntimeError("killed while writing")
    assert contents(target) == {f"f{i}": "old" for i in range(3)}
    assert leftovers(tmp_path, "final") == []
    with atomic_dir(target) as t:
        fill(t, "new")
    assert contents(target) == {f"f{i}": "new" for i in range(3)}
    assert leftovers(tmp_path, "final") == []


def test_atomic_dir_temp_names_are_unique_per_use(tmp_path):
    target = tmp_path / "final"
    with atomic_dir(target) as a, atomic_dir(target) as b:  # two uses at once in one process
        assert a != b
        fill(a, "a")
        fill(b, "b")
    assert contents(target) == {f"f{i}": "a" for i in range(3)}  # the last swap wins, whole
    names, barrier = [], threading.Barrier(2)

    def writer(tag):
        with atomic_dir(target) as t:
            names.append(t.name)
            barrier.wait(timeout=30)  # both temp folders exist at the same time
            fill(t, tag)
    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("x", "y")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(names)) == 2 and all(str(os.getpid()) in n for n in names)
    assert set(contents(target).values()) in ({"x"}, {"y"})
    assert leftovers(tmp_path, "final") == []


def test_atomic_dir_crash_between_swap_steps_leaves_a_complete_folder(tmp_path, monkeypatch):
    target = tmp_path / "final"
    with atomic_dir(target) as t:
        fill(t, "old")
    # without RENAME_EXCHANGE: old -> backup, then new -> target; die before the second rename
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    real_rename, renames = os.rename, []

    def rename(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        if Path(dst) == target and Path(src).name.startswith(".final.tmp-") and len(renames) > 1:
            raise KeyboardInterrupt  # killed between the two renames
        return real_rename(src, dst)
    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as t:
        fill(t, "new")
    monkeypatch.setattr(fileio.os, "rename", real_rename)
    assert not target.exists()
    found = complete_dir(target)
    assert found == fileio.backup_path(target) and contents(found) == {f"f{i}": "old" for i in range(3)}
    # the next writer first puts the old folder back, then swaps its own in
    with atomic_dir(target) as t:
        assert contents(target) == {f"f{i}": "old" for i in range(3)}
        fill(t, "newer")
    assert contents(target) == {f"f{i}": "newer" for i in range(3)}
    assert complete_dir(target) == target and not fileio.backup_path(target).exists()


def exchange_supported(tmp_path: Path) -> bool:
    a, b = tmp_path / "xa", tmp_path / "xb"
    a.mkdir(), b.mkdir()
    ok = fileio._exchange(a, b)
    shutil.rmtree(a), shutil.rmtree(b)
    return ok


def test_atomic_dir_swap_never_leaves_the_target_missing(tmp_path):
    if not exchange_supported(tmp_path):
        pytest.skip("no RENAME_EXCHANGE here: the swap goes through the backup name (tested above)")
    target = tmp_path / "final"
    with atomic_dir(target) as t:
        fill(t, "0")
    stop, seen_bad = threading.Event(), []

    def reader():
        # by path, as from_pretrained reads a model folder: whichever folder the name points
        # to when a file is opened is complete (a listing of a folder that a swap has since
        # moved away and deleted may come back empty: that is not what readers do)
        while not stop.is_set():
            try:
                got = [(target / f"f{i}").read_text() for i in range(3)]
            except FileNotFoundError as e:
                seen_bad.append(repr(e))
                continue
            if not all(got):  # (files read one by one across a swap may mix versions)
                seen_bad.append(got)
    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(1, 40):
            with atomic_dir(target) as t:
                fill(t, str(i))
    finally:
        stop.set()
        th.join()
    assert seen_bad == [] and contents(target) == {f"f{i}": "39" for i in range(3)}
    assert leftovers(tmp_path, "final") == []


def test_atomic_dir_removes_temp_folders_of_dead_processes(tmp_path):
    target = tmp_path / "final"
    dead = tmp_path / f".final.tmp-{fileio._HOST}-999999999-abc"  # beyond any pid_max
    dead.mkdir()
    other_host = tmp_path / ".final.tmp-elsewhere-999999999-abc"
    other_host.mkdir()
    with atomic_dir(target) as t:
        fill(t, "x")
    assert not dead.exists() and other_host.exists()  # another host's writer may be alive


def test_write_json_uses_unique_temp_names(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        return real(src, dst)
    monkeypatch.setattr(fileio.os, "replace", replace)
    for i in range(2):
        fileio.write_json(tmp_path / "a.json", {"i": i})
    assert len(set(seen)) == 2 and json.loads((tmp_path / "a.json").read_text()) == {"i": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]

