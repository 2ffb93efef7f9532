"""What every config dataclass is built from: a field with its CLI help (`opt`), the checks
and conversions the configs share."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Any

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def parse_delimiter(text: str) -> str:
    """A delimiter as typed on a command line: the escapes \\n, \\t, \\r and \\\\ are read;
    any other character (accents included) stays as it is."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its CLI help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def from_known_keys(cls: type, d: dict[str, Any]) -> Any:
    """A config dataclass from a dict; a key it does not know is an error naming the keys."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**d)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
