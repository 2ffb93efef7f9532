"""Where a result came from: the git commit, the command line, the hardware, the time and
the library versions. Every results JSON a command writes carries `provenance()` under a
`provenance` key, so a number can be traced back without reading a log.

Nothing here raises: outside a git checkout (an installed package, a copied tree, no `git`
on the machine) the commit and the dirty flag are None.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout holding ctr/, if any
PROVENANCE_FILE = "provenance.json"  # what a training run writes beside its train_config.json
_command: list[str] | None = None  # set by `ctr.cli.main(argv)` when called with its own argv


def _git(*args: str, root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=root, capture_output=True,
                              text=True, timeout=20, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):  # no git, no folder, too slow
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """{"commit": full hash or None, "dirty": True when tracked files differ from the commit
    (None when unknown)} of the checkout holding `root` (default: the one holding ctr/)."""
    root = Path(root) if root is not None else SOURCE_ROOT
    commit = _git("rev-parse", "--verify", "HEAD", root=root)
    if not commit or not commit.strip():
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", root=root)
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


@contextlib.contextmanager
def command_as(argv: list[str] | None) -> Iterator[None]:
    """Record `argv` as the command inside the block (`ctr.cli.main(["eval", ...])` called
    from Python, where `sys.argv` is the caller's); None leaves `sys.argv`."""
    global _command
    before, _command = _command, (list(argv) if argv is not None else _command)
    try:
        yield
    finally:
        _command = before


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, shell-quoted: `argv`, else the one `command_as` recorded, else
    `sys.argv`."""
    return shlex.join(argv if argv is not None else _command if _command is not None else sys.argv)


def hardware() -> dict[str, Any]:
    """The machine: platform, CPU architecture and count, torch threads, the GPU if any."""
    import torch  # here, not at the top: this module sits below everything else

    info = {"platform": platform.platform(), "cpu": platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def hardware_tag() -> str:
    """The folder name for this machine under results/<experiment>/: "cpu", or the GPU's model
    in lower case ("h100", "h200"; "gpu" when its name has no model number)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    words = torch.cuda.get_device_name(0).replace("-", " ").split()
    model = next((w for w in words if any(c.isdigit() for c in w)), "gpu")
    return "".join(c for c in model.lower() if c.isalnum()) or "gpu"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    torch = sys.modules.get("torch")
    return {"python": platform.python_version(),
            "torch": getattr(torch, "__version__", None) or _version("torch"),
            "transformers": _version("transformers")}


# The code that runs is the code imported when the process started: a commit or an edit made
# while a long run goes on must not be credited with its result.
_AT_IMPORT = (SOURCE_ROOT, git_state())


def code_state() -> dict[str, Any]:
    """git_state() of the code this process imported; when the checkout has changed since,
    the state now is kept under "at_end"."""
    now = git_state()
    root, start = _AT_IMPORT
    if root != SOURCE_ROOT or start["commit"] is None or start == now:
        return now
    return {**start, "at_end": now}


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """commit, dirty, command, hardware, time (UTC, ISO 8601) and versions, for a results JSON."""
    return {**code_state(), "command": command_line(argv), "hardware": hardware(),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions()}
