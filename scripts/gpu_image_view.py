"""A folder of links to this environment's copies of the GPU image's packages
(scripts/gpu_image.txt) and of what their versions here need, and to nothing the project
carries as wheels (scripts/gpu_wheels.py): what the CPU dry run's fresh venv sees in place of
the GPU machine's image (scripts/gpu_dryrun.sh).

    python scripts/gpu_image_view.py VIEW      (prints how many distributions it linked)
"""
from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_wheels import image_packages, needed, norm  # noqa: E402


def main(view: str) -> int:
    out = Path(view)
    out.mkdir(parents=True, exist_ok=True)
    image = image_packages()
    carried = set(needed(image)[0])
    installed = {norm(d.metadata["Name"]): d for d in md.distributions()}
    todo, seen = [n for n in image if n in installed], set()
    while todo:  # the image's packages and, at their versions here, what they need
        name = todo.pop()
        if name in seen or name in carried or name == "pip" or name not in installed:
            continue
        seen.add(name)
        dist = installed[name]
        site = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            link = out / top
            if not link.exists() and (site / top).exists():
                link.symlink_to(site / top)
        for r in dist.requires or []:
            req = Requirement(r)
            if not req.marker or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    print(f"[gpu_image_view] {len(seen)} distributions linked into {out} (none of: {', '.join(sorted(carried))})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
