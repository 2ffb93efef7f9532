"""Small file helpers: crash-safe folders, JSON and JSONL files.

Everything written here is fsynced before it is renamed into place, temp names are
unique per call (host, pid and a random part), and readers never see a half-written
file or folder under the name they look for.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import re
import shutil
import socket
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _temp_path(path: Path, kind: str = "tmp") -> Path:
    """A hidden name beside `path`, unique per call (two threads, processes or hosts never
    share one)."""
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def backup_path(path: str | os.PathLike) -> Path:
    """Where `atomic_dir` keeps the previous folder while it swaps without RENAME_EXCHANGE."""
    path = Path(path)
    return path.with_name(f".{path.name}.bak")


def complete_dir(path: str | os.PathLike) -> Path | None:
    """The complete folder for `path`: `path` itself, else the backup a swap without
    RENAME_EXCHANGE holds between its two renames (see `atomic_dir`), else None. `path` is
    looked at again last: a swap that finished meanwhile has removed the backup."""
    path = Path(path)
    for p in (path, backup_path(path), path):
        if p.is_dir():
            return p
    return None


def _fsync(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # platforms that cannot open a folder (Windows)
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on a folder
        if not directory or e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file, then every folder bottom-up, under `root` (root included)."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            f = Path(dirpath) / name
            if not f.is_symlink():
                _fsync(f)
        _fsync(Path(dirpath), directory=True)


_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE).
    False where the platform or the filesystem does not support it."""
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):  # libc without renameat2 (glibc < 2.28, musl)
            _renameat2 = False
    if _renameat2 is False:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _sweep_leftovers(path: Path) -> None:
    """Remove temp folders of `path` that dead processes of this host left behind, and
    settle a backup left by a swap interrupted between its two renames."""
    prefix = f".{path.name}.tmp-{_HOST}-"
    for p in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    backup = backup_path(path)
    if backup.is_dir():
        if path.exists():  # path only ever appears complete: the backup is the older one
            shutil.rmtree(backup, ignore_errors=True)
        else:  # the swap died after moving the old folder away: put it back
            os.rename(backup, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that becomes `path` only once the block finished.

    The block writes into a fresh hidden folder beside `path` (`.NAME.tmp-HOST-PID-RANDOM`,
    unique per call, so concurrent writers never mix files). On success every file and
    folder in it is fsynced and it is swapped in:

    - `path` absent (checkpoints: a new name every step): one rename. Readers see either
      nothing or the complete folder.
    - `path` present (`final/`, a rewritten folder): on Linux, renameat2(RENAME_EXCHANGE)
      swaps the old and the new folder in one step, so `path` names a complete folder at
      every moment; the old one is then deleted from the temp name. Where exchange is not
      supported (other systems, some filesystems), the old folder is first renamed to the
      fixed backup `.NAME.bak`, then the new one to `path`: a crash between the two leaves
      the complete old folder at the backup, which `complete_dir(path)` returns to readers
      and the next `atomic_dir(path)` moves back before it starts.

    The parent folder is fsynced after the swap. A crash inside the block leaves the
    previous `path` untouched; leftover temp folders of dead processes are removed by the
    next call for the same path. Concurrent writers of the *same* path each produce a
    complete folder and the last swap wins (with RENAME_EXCHANGE; without it, one writer
    at a time per path, as training has).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(path)
    tmp = _temp_path(path)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _swap_in(tmp, path)
    _fsync(path.parent, directory=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> Path | None:
    """Move the complete folder `tmp` to `path`; returns where the old folder went."""
    try:
        os.rename(tmp, path)  # path absent (or an empty folder): one atomic step
        return None
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    if _exchange(tmp, path):
        return tmp  # tmp now holds the old folder
    backup = backup_path(path)
    shutil.rmtree(backup, ignore_errors=True)
    os.rename(path, backup)
    _fsync(path.parent, directory=True)
    os.rename(tmp, path)
    return backup


def _write_atomic(path: Path, text: str) -> None:
    tmp = _temp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync(path.parent, directory=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON through a unique fsynced temp file and an atomic rename."""
    _write_atomic(Path(path), json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically (unique fsynced temp file, then rename)."""
    _write_atomic(Path(path), "".join(json.dumps(r, default=str) + "\n" for r in records))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as one line, flushed and fsynced (a kill can cut only this line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, repair: bool = False) -> list[Any]:
    """The records of a JSONL file written by `append_jsonl`.

    A last line that does not parse (a kill or power loss mid-write) is dropped with a
    warning naming the file; with `repair`, the file is also cut back to its complete
    lines so appending can go on. A bad line before the last one is corruption, not an
    interrupted write: ValueError naming file:line.
    """
    path = Path(path)
    raw = path.read_bytes()
    lines, offset = [], 0
    for no, line in enumerate(raw.split(b"\n"), 1):
        lines.append((no, line, offset))
        offset += len(line) + 1
    filled = [i for i, (_, line, _) in enumerate(lines) if line.strip()]
    records: list[Any] = []
    for i in filled:
        no, line, start = lines[i]
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            if i != filled[-1]:
                raise ValueError(f"{path}:{no}: corrupt JSON line ({why}); only an interrupted last "
                                 "line is dropped on its own, so this file needs a look") from None
            warnings.warn(f"{path}:{no}: dropped a truncated last line (an interrupted write)",
                          RuntimeWarning, stacklevel=2)
            if repair:
                os.truncate(path, start)
            return records
    if repair and raw and not raw.endswith(b"\n"):  # complete record, its newline cut off
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
    return records
