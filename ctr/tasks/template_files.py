"""Reading PromptSource ``templates.yaml`` files into ``PromptTemplate`` objects."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from ctr.tasks.templates import PromptTemplate


class TemplateLoadError(ValueError):
    """A templates.yaml file that cannot be parsed or has a malformed template."""


class _TemplateYamlLoader(yaml.SafeLoader):
    """SafeLoader that reads PromptSource's custom tags as plain mappings."""


def _as_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return loader.construct_mapping(node, deep=True)


_TemplateYamlLoader.add_constructor("!Template", _as_mapping)
_TemplateYamlLoader.add_constructor("!TemplateMetadata", _as_mapping)


def load_templates(path: str | Path) -> list[PromptTemplate]:
    """Load a PromptSource ``templates.yaml`` (or the folder holding one), sorted by name."""
    path = Path(path)
    if path.is_dir():
        path = path / "templates.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no templates file at {path}")
    try:
        with path.open(encoding="utf-8") as fh:
            doc = yaml.load(fh, Loader=_TemplateYamlLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TemplateLoadError(f"cannot parse {path}{where}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("templates"), dict):
        raise TemplateLoadError(f"{path}: expected a mapping with a 'templates' mapping")
    dataset = "/".join(str(x) for x in (doc.get("dataset"), doc.get("subset")) if x)
    templates = [_parse_template(path, key, raw, dataset) for key, raw in doc["templates"].items()]
    names = Counter(t.name for t in templates)
    dupes = [n for n, c in names.items() if c > 1]
    if dupes:  # names are how users select templates, so they must be unique
        raise TemplateLoadError(f"{path}: duplicate template names {dupes}")
    return sorted(templates, key=lambda t: t.name)


def _parse_template(path: Path, key: Any, raw: Any, dataset: str) -> PromptTemplate:
    if not isinstance(raw, dict):
        raise TemplateLoadError(f"{path}: template {key!r} is not a mapping")
    missing = [k for k in ("name", "jinja") if not isinstance(raw.get(k), str)]
    if missing:
        raise TemplateLoadError(f"{path}: template {key!r} lacks string field(s) {missing}")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise TemplateLoadError(f"{path}: template {key!r} has non-mapping metadata")
    choices = raw.get("answer_choices")
    return PromptTemplate(
        name=raw["name"],
        id=str(raw.get("id") or key),
        jinja=raw["jinja"],
        answer_choices_jinja=None if choices is None else str(choices),
        original_task=bool(meta.get("original_task")),
        choices_in_prompt=meta.get("choices_in_prompt"),
        metrics=tuple(meta.get("metrics") or ()),
        reference=str(raw.get("reference") or ""),
        source=str(path),
        dataset=dataset,
    )
