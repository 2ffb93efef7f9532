"""What every benchmark does with its figures: print them as JSON and, with --out, write them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: str | None) -> None:
    """Print `result` as indented JSON; write it to `out` too (its folder, e.g.
    results/<experiment>/<hardware>/, is made when missing)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
