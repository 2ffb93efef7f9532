"""Training tasks: the T0 sample (one task per dataset x template file) and users' JSONL.

Real data is messy: completions end with a literal ``<|endoftext|>``, some files are
empty, some targets are empty, some tasks have a single answer. Everything skipped is
counted and reported, a malformed line is an error naming file and line.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ctr.config import MixtureOptions

END_MARKER = "<|endoftext|>"
MANIFEST = "t0_train_manifest.tsv"
DATA_ENV_VAR = "CTR_DATA_DIR"
# A task with at most this many distinct targets gets its answer distribution reported.
FEW_ANSWERS = 10
UNKNOWN_TYPE = "unknown"  # the task type of a task that names none


@dataclass
class Example:
    source: str
    target: str
    choices: list[str] | None = None


@dataclass
class Task:
    name: str
    examples: list[Example]
    task_type: str = UNKNOWN_TYPE
    dataset: str = ""
    template: str = ""
    answer_counts: dict[str, int] | None = None  # only for tasks with few distinct answers

    @property
    def single_answer(self) -> bool:
        return self.answer_counts is not None and len(self.answer_counts) == 1


@dataclass
class LoadReport:
    files: int = 0
    examples: int = 0
    empty_files: list[str] = field(default_factory=list)
    empty_targets: Counter = field(default_factory=Counter)
    end_markers_stripped: int = 0
    dropped_single_answer: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"tasks read: {self.files} files, {self.examples} examples kept",
                 f"'{END_MARKER}' markers stripped: {self.end_markers_stripped}",
                 f"empty files skipped: {len(self.empty_files)}"
                 + (f" ({', '.join(self.empty_files[:6])}{' ...' if len(self.empty_files) > 6 else ''})"
                    if self.empty_files else ""),
                 f"examples with empty targets skipped: {sum(self.empty_targets.values())} "
                 f"in {len(self.empty_targets)} tasks"]
        if self.dropped_single_answer:
            lines.append(f"single-answer tasks dropped (--drop-single-answer): "
                         f"{len(self.dropped_single_answer)}")
        return "\n".join(lines)


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent  # parent of the `ctr` package dir


def data_dir(path: str | Path | None = None) -> Path:
    """Resolve the data folder: argument, else $CTR_DATA_DIR, else ../shared/data.

    An explicit argument or env var that points nowhere is an error, not a silent
    fallback, so a typo cannot make a run read some other copy of the data.
    """
    if path is None:
        path = os.environ.get(DATA_ENV_VAR) or None
        origin = f"${DATA_ENV_VAR}"
    else:
        origin = "the data_dir argument"
    if path is not None:
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_dir():
            raise FileNotFoundError(
                f"data folder {resolved} (from {origin}) does not exist; "
                f"pass the path of shared/data or set {DATA_ENV_VAR}"
            )
        return resolved
    candidates = [Path.cwd() / "../shared/data", _repo_root() / "../shared/data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c.resolve()) for c in candidates)
    raise FileNotFoundError(f"data folder not found (tried {tried}); set {DATA_ENV_VAR} to the shared/data path")


def clean_target(text: str) -> tuple[str, bool]:
    stripped = text.endswith(END_MARKER)
    if stripped:
        text = text[: -len(END_MARKER)]
    return text.strip(), stripped


def _answer_counts(examples: list[Example]) -> dict[str, int] | None:
    counts = Counter(e.target for e in examples)
    return dict(counts.most_common()) if len(counts) <= FEW_ANSWERS else None


def read_manifest(data_dir: Path) -> dict[str, dict[str, str]]:
    path = data_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: T0 manifest not found")
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


def load_t0_tasks(data_dir_arg: str | Path | None = None, tasks: list[str] | None = None,
                  drop_single_answer: bool = False, limit_examples: int | None = None,
                  max_tasks: int | None = None, tasks_per_type: int | None = None
                  ) -> tuple[list[Task], LoadReport]:
    """Tasks of `t0_train/` (one per file), with the manifest's task types."""
    root = data_dir(data_dir_arg)
    manifest = read_manifest(root)
    folder = root / "t0_train"
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .jsonl task files")
    if tasks:
        by_stem = {f.stem: f for f in files}
        unknown = [t for t in tasks if t not in by_stem]
        if unknown:
            raise ValueError(f"unknown T0 tasks {unknown}; names are file stems of {folder}")
        files = [by_stem[t] for t in tasks]
    if max_tasks:
        files = files[:max_tasks]
    report = LoadReport()
    out = []
    for f in files:
        row = manifest.get(f.name, {})
        task = _read_prompt_completion(f, report, limit_examples)
        report.files += 1
        if task is None:
            continue
        task.task_type = row.get("task_type", "unknown")
        task.dataset, task.template = row.get("dataset", ""), row.get("template", "")
        if drop_single_answer and task.single_answer:
            report.dropped_single_answer.append(task.name)
            continue
        report.examples += len(task.examples)
        out.append(task)
    if tasks_per_type:
        out = spread_over_types(out, tasks_per_type)
        report.examples = sum(len(t.examples) for t in out)
    return out, report


def spread_over_types(tasks: list[Task], per_type: int) -> list[Task]:
    """At most `per_type` tasks of each type, taking datasets round-robin so that a small
    selection covers many datasets rather than many templates of one."""
    chosen = []
    for ttype in sorted({t.task_type for t in tasks}):
        by_dataset: dict[str, list[Task]] = {}
        for t in tasks:
            if t.task_type == ttype:
                by_dataset.setdefault(t.dataset or t.name, []).append(t)
        queues = list(by_dataset.values())
        picked: list[Task] = []
        while len(picked) < per_type and any(queues):
            for q in queues:
                if q and len(picked) < per_type:
                    picked.append(q.pop(0))
        chosen += picked
    return sorted(chosen, key=lambda t: t.name)


def _parse_line(path: Path, lineno: int, line: str, keys: tuple[str, ...]) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{path}:{lineno}: missing field(s) {missing}")
    for k in keys:
        if not isinstance(obj[k], str):
            raise ValueError(f"{path}:{lineno}: field {k!r} must be a string")
    return obj


def _read_prompt_completion(path: Path, report: LoadReport, limit: int | None) -> Task | None:
    examples = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = _parse_line(path, lineno, line, ("prompt", "completion"))
            target, stripped = clean_target(obj["completion"])
            report.end_markers_stripped += stripped
            if not target:
                report.empty_targets[path.stem] += 1
                continue
            examples.append(Example(obj["prompt"], target))
            if limit and len(examples) >= limit:
                break
    if not examples:
        if not report.empty_targets.get(path.stem):
            report.empty_files.append(path.stem)
        return None
    return Task(path.stem, examples, answer_counts=_answer_counts(examples))


def load_jsonl_tasks(paths: list[str | Path], drop_single_answer: bool = False,
                     limit_examples: int | None = None) -> tuple[list[Task], LoadReport]:
    """Users' tasks: JSON lines with `task`, `input`, `target` and optional `choices`."""
    report = LoadReport()
    by_task: dict[str, list[Example]] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such task file")
        report.files += 1
        n = 0
        with open(p) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                obj = _parse_line(p, lineno, line, ("task", "input", "target"))
                choices = obj.get("choices")
                if choices is not None and not (isinstance(choices, list)
                                                and all(isinstance(c, str) for c in choices)):
                    raise ValueError(f"{p}:{lineno}: 'choices' must be a list of strings")
                target, stripped = clean_target(obj["target"])
                report.end_markers_stripped += stripped
                if not target:
                    report.empty_targets[obj["task"]] += 1
                    continue
                ex = by_task.setdefault(obj["task"], [])
                if limit_examples and len(ex) >= limit_examples:
                    continue
                ex.append(Example(obj["input"], target, choices))
                n += 1
        if n == 0:
            report.empty_files.append(p.name)
    tasks = []
    for name in sorted(by_task):
        task = Task(name, by_task[name], answer_counts=_answer_counts(by_task[name]))
        if drop_single_answer and task.single_answer:
            report.dropped_single_answer.append(name)
            continue
        report.examples += len(task.examples)
        tasks.append(task)
    return tasks, report


def answer_report(tasks: list[Task], limit: int = 40) -> str:
    """One line per task with few distinct answers: its answer distribution."""
    lines = []
    for t in tasks:
        if t.answer_counts is None:
            continue
        total = sum(t.answer_counts.values())
        top = ", ".join(f"{a[:20]!r} {c / total:.0%}" for a, c in list(t.answer_counts.items())[:4])
        flag = "  <- single answer" if t.single_answer else ""
        lines.append(f"  {t.name}: {top}{flag}")
    more = f"\n  ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "answer distributions (tasks with <= %d distinct answers):\n" % FEW_ANSWERS + \
        "\n".join(lines[:limit]) + more


def load_tasks(options: MixtureOptions, verbose: bool = False) -> list[Task]:
    """The training tasks a command's mixture options choose (`ctr.config.MixtureOptions`),
    in memory; `verbose` prints the loading summary and the answers of the tasks."""
    if options.train_files:
        tasks, report = load_jsonl_tasks(options.train_files, options.drop_single_answer,
                                         options.limit_examples)
    else:
        tasks, report = load_t0_tasks(options.data_dir, options.tasks or None, options.drop_single_answer,
                                      options.limit_examples, options.max_tasks, options.tasks_per_type)
    if not tasks:
        raise ValueError("no training tasks left after loading (--tasks / --train-files)")
    if verbose:
        print(report.summary())
        print(answer_report(tasks, limit=12))
    return tasks
