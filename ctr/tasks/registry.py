"""Registry of evaluation tasks (the 11 held-out T0 datasets and a "near" suite).

In the spirit of lm-evaluation-harness: each task names its data files, its PromptSource
templates and its label field. Examples keep their line number in the split file as a
stable ``index`` so subsamples (e.g. template-selection vs. evaluation sets) can be kept
disjoint, and labels are kept apart from the fields the prompt may read.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

from ctr.tasks.mixture import DATA_ENV_VAR, data_dir  # noqa: F401  (re-exported)
from ctr.tasks.templates import (
    PromptedInput,
    PromptTemplate,
    RenderError,
    SkipCounter,
    SkipReason,
    render_dataset,
)
from ctr.tasks.template_files import load_templates

SUITES = ("t0", "near")

# ../shared/CTR_SPEC.md section 5: the released code's T5-Large results (accuracy %).
PAPER_REFERENCE = {
    "anli_r1": (33.4, 35.0), "anli_r2": (34.4, 32.9), "anli_r3": (33.8, 38.7),
    "super_glue_cb": (87.5, 78.6), "super_glue_rte": (80.5, 81.2), "super_glue_copa": (92.0, 91.0),
    "hellaswag": (27.6, 34.9), "story_cloze_2016": (90.1, 92.0), "super_glue_wic": (56.6, 56.6),
    "super_glue_wsc.fixed": (62.5, 68.2), "winogrande_winogrande_xl": (49.4, 55.2),
}

# Task types of the held-out tasks (T0 paper, table of held-out types), so that adapted
# codes from codes.json can be named; near-transfer sets share T0 training types.
HELDOUT_TYPES = {
    "anli_r1": "natural_language_inference", "anli_r2": "natural_language_inference",
    "anli_r3": "natural_language_inference", "super_glue_cb": "natural_language_inference",
    "super_glue_rte": "natural_language_inference", "super_glue_wsc.fixed": "coreference",
    "winogrande_winogrande_xl": "coreference", "super_glue_copa": "sentence_completion",
    "hellaswag": "sentence_completion", "story_cloze_2016": "sentence_completion",
    "super_glue_wic": "word_sense_disambiguation", "glue_sst2": "sentiment",
    "ag_news": "topic_classification", "trec": "question_classification",
}


@dataclass(frozen=True)
class EvalTask:
    name: str  # the data folder name, e.g. "super_glue_rte"
    suite: str  # "t0" or "near"
    data_folder: str  # relative to the data dir
    template_path: str  # relative to the data dir, folder holding templates.yaml
    eval_split: str  # file name inside data_folder
    train_split: str | None  # few-shot / training file, None when the dataset has none
    label_field: str
    # Fields the prompt must never read: the label plus anything derived from it
    # (ANLI's annotator "reason", TREC's second label granularity).
    extra_hidden_fields: tuple[str, ...] = ()
    # Casts that restore the Hugging Face field types the templates were written for.
    field_casts: tuple[tuple[str, Callable[[Any], Any]], ...] = field(default=(), compare=False)

    @property
    def hidden_fields(self) -> tuple[str, ...]:
        return (self.label_field, *self.extra_hidden_fields)

    def split_file(self, split: str) -> str:
        if split == "eval":
            return self.eval_split
        if split == "train":
            if self.train_split is None:
                raise ValueError(
                    f"task {self.name!r} has no train split; take few-shot examples from "
                    f"part of {self.eval_split} and keep them out of the evaluation set"
                )
            return self.train_split
        raise ValueError(f"unknown split {split!r}; use 'eval' or 'train'")


@dataclass(frozen=True)
class TaskExample:
    """One raw example. The label is kept out of ``fields`` on purpose."""

    index: int  # 0-based line number in the split file: stable across subsamples
    fields: Mapping[str, Any]  # everything the prompt may read
    hidden: Mapping[str, Any]  # label field(s): read only through `label`/`full_fields`
    label_field: str

    @property
    def label(self) -> Any:
        return self.hidden[self.label_field]

    def full_fields(self) -> dict[str, Any]:
        return {**self.fields, **self.hidden}


@dataclass(frozen=True)
class EvalInstance:
    """A rendered example for rank classification."""

    index: int
    prompt: PromptedInput  # input text + choices: all a model may see
    label_index: int  # gold choice; scoring code reads it, prompting code must not


@dataclass(frozen=True)
class SkippedTemplate:
    name: str
    skipped: SkipCounter  # reason -> number of examples

    def __str__(self) -> str:
        return f"{self.name}: {self.skipped.summary()}"


@dataclass(frozen=True)
class TemplateReport:
    usable: list[PromptTemplate]
    skipped: list[SkippedTemplate]
    # Usable templates that still skipped some examples (e.g. COPA templates that
    # only apply to "effect" questions): name -> reasons.
    partial: dict[str, SkipCounter]
    checked_examples: int

    def summary(self) -> str:
        lines = [f"{len(self.usable)} usable templates (checked on {self.checked_examples} examples)"]
        lines += [f"  partial {name}: {c.summary()}" for name, c in self.partial.items()]
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


# TREC fine labels: our files use the current Hugging Face order (50 "COARSE:fine" labels),
# the PromptSource templates were written for the older 47-label order, which merged
# the three "other" and two "desc" labels. Remap by fine name so templates index right.
_TREC_FINE_HF = (
    "ABBR:abb ABBR:exp ENTY:animal ENTY:body ENTY:color ENTY:cremat ENTY:currency ENTY:dismed "
    "ENTY:event ENTY:food ENTY:instru ENTY:lang ENTY:letter ENTY:other ENTY:plant ENTY:product "
    "ENTY:religion ENTY:sport ENTY:substance ENTY:symbol ENTY:techmeth ENTY:termeq ENTY:veh ENTY:word "
    "DESC:def DESC:desc DESC:manner DESC:reason HUM:gr HUM:ind HUM:title HUM:desc LOC:city LOC:country "
    "LOC:mount LOC:other LOC:state NUM:code NUM:count NUM:date NUM:dist NUM:money NUM:ord NUM:other "
    "NUM:period NUM:perc NUM:speed NUM:temp NUM:volsize NUM:weight"
).split()
_TREC_FINE_PROMPTSOURCE = (
    "manner cremat animal exp ind gr title def date reason event state desc count other letter "
    "religion food country color termeq city body dismed mount money product period substance sport "
    "plant techmeth volsize instru abb speed word lang perc code dist temp symbol ord veh weight currency"
).split()


def _trec_fine_to_promptsource(label: int) -> int:
    return _TREC_FINE_PROMPTSOURCE.index(_TREC_FINE_HF[label].split(":")[1])


def _t0(name: str, templates: str, label: str = "label", train: str | None = "train.jsonl", **kw: Any) -> EvalTask:
    return EvalTask(name, "t0", f"t0_eval/{name}", f"templates/{templates}", "validation.jsonl", train, label, **kw)


def _near(name: str, templates: str, eval_split: str, train: str | None, label: str = "label", **kw: Any) -> EvalTask:
    return EvalTask(name, "near", f"near_eval/{name}", f"templates/{templates}", eval_split, train, label, **kw)


_TASKS: dict[str, EvalTask] = {
    t.name: t
    for t in (
        # ANLI has no train file here; the three rounds share one template file.
        _t0("anli_r1", "anli", train=None, extra_hidden_fields=("reason",)),
        _t0("anli_r2", "anli", train=None, extra_hidden_fields=("reason",)),
        _t0("anli_r3", "anli", train=None, extra_hidden_fields=("reason",)),
        _t0("super_glue_cb", "super_glue/cb"),
        _t0("super_glue_copa", "super_glue/copa"),
        _t0("super_glue_rte", "super_glue/rte"),
        _t0("super_glue_wic", "super_glue/wic"),
        _t0("super_glue_wsc.fixed", "super_glue/wsc.fixed"),
        _t0("winogrande_winogrande_xl", "winogrande/winogrande_xl", label="answer", train="train_debiased.jsonl"),
        # HF HellaSwag stores `label` as a string ("0".."3"); our copy has ints.
        _t0("hellaswag", "hellaswag", train=None, field_casts=(("label", str),)),
        _t0("story_cloze_2016", "story_cloze/2016", label="answer_right_ending", train=None),
        _near("glue_sst2", "glue/sst2", "validation.jsonl", "train.jsonl"),
        _near(
            "trec", "trec", "test.jsonl", "train.jsonl", label="label_coarse",
            extra_hidden_fields=("label_fine",), field_casts=(("label_fine", _trec_fine_to_promptsource),),
        ),
        _near("ag_news", "ag_news", "test.jsonl", None),
    )
}


def list_tasks(suite: str | None = None) -> list[EvalTask]:
    """Tasks of one suite ("t0", "near"), or all of them, in registry order."""
    if suite is not None and suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return [t for t in _TASKS.values() if suite is None or t.suite == suite]


def get_task(name: str | EvalTask) -> EvalTask:
    if isinstance(name, EvalTask):
        return name
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(_TASKS)}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no}: invalid JSON ({exc})") from exc
    return rows


def load_examples(
    task: str | EvalTask,
    split: str = "eval",
    max_examples: int | None = None,
    seed: int | None = 0,
    root: str | Path | None = None,
) -> list[TaskExample]:
    """Load a split ("eval" or "train"); with max_examples, a seeded subsample.

    The subsample keeps file order and each example's original line index. ``seed=None``
    takes the first ``max_examples`` instead (cheap, for smoke checks).
    """
    task = get_task(task)
    rows = _read_jsonl(data_dir(root) / task.data_folder / task.split_file(split))
    indices = list(range(len(rows)))
    if max_examples is not None and max_examples < len(rows):
        if seed is None:
            indices = indices[:max_examples]
        else:
            indices = sorted(random.Random(seed).sample(indices, max_examples))
    casts = dict(task.field_casts)
    hidden_names = set(task.hidden_fields)
    examples = []
    for i in indices:
        row = {k: casts[k](v) if k in casts else v for k, v in rows[i].items()}
        if task.label_field not in row:
            raise ValueError(f"{task.name} {split} line {i + 1}: no label field {task.label_field!r}")
        examples.append(
            TaskExample(
                index=i,
                # Read-only views: nothing downstream can slip a label back into `fields`.
                fields=MappingProxyType({k: v for k, v in row.items() if k not in hidden_names}),
                hidden=MappingProxyType({k: v for k, v in row.items() if k in hidden_names}),
                label_field=task.label_field,
            )
        )
    return examples


def task_templates(task: str | EvalTask, root: str | Path | None = None) -> list[PromptTemplate]:
    task = get_task(task)
    return load_templates(data_dir(root) / task.template_path)


def select_templates(templates: Sequence[PromptTemplate], names: Iterable[str]) -> list[PromptTemplate]:
    """Pick templates by name, in the order given; unknown names are an error."""
    by_name = {t.name: t for t in templates}
    names = list(names)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown template name(s) {unknown}; available: {sorted(by_name)}")
    return [by_name[n] for n in names]


def render_task(
    task: str | EvalTask, template: PromptTemplate, examples: Sequence[TaskExample]
) -> tuple[list[EvalInstance], SkipCounter]:
    """Render labeled instances. The prompt is checked to be identical with the label hidden."""
    task = get_task(task)
    rendered, skipped = render_dataset(
        template,
        [ex.full_fields() for ex in examples],
        seeds=[ex.index for ex in examples],  # seed `choice` by stable index
        hidden_fields=task.hidden_fields,
    )
    return [EvalInstance(r.key, r.prompt, r.label_index) for r in rendered], skipped


def render_prompts(template: PromptTemplate, examples: Sequence[TaskExample]) -> list[tuple[int, PromptedInput | RenderError]]:
    """Label-free rendering: only ``example.fields`` is ever passed to the template."""
    out: list[tuple[int, PromptedInput | RenderError]] = []
    for ex in examples:
        try:
            out.append((ex.index, template.render_input_and_choices(ex.fields, seed=ex.index)))
        except RenderError as err:
            out.append((ex.index, err))
    return out


# Failures that concern single examples (a conditional template that does not apply,
# an unlabeled row); any other reason means the template itself is unusable here.
EXAMPLE_LEVEL_REASONS = frozenset({SkipReason.EMPTY_INPUT, SkipReason.EMPTY_TARGET})


def usable_templates(
    task: str | EvalTask,
    names: Iterable[str] | None = None,
    original_only: bool = True,
    max_examples: int | None = None,
    split: str = "eval",
    root: str | Path | None = None,
    examples: Sequence[TaskExample] | None = None,
) -> TemplateReport:
    """Templates that render every checked example of the task (see EXAMPLE_LEVEL_REASONS).

    ``names`` picks templates explicitly (then ``original_only`` is ignored). Examples
    are the first ``max_examples`` of the split unless given.
    """
    task = get_task(task)
    templates = task_templates(task, root)
    if names is not None:
        templates = select_templates(templates, names)
    elif original_only:
        templates = [t for t in templates if t.original_task]
    if examples is None:
        examples = load_examples(task, split, max_examples=max_examples, seed=None, root=root)
    usable, skipped, partial = [], [], {}
    for template in templates:
        rendered, skips = render_task(task, template, examples)
        if rendered and set(skips) <= EXAMPLE_LEVEL_REASONS:
            usable.append(template)
            if skips:
                partial[template.name] = skips
        else:
            skipped.append(SkippedTemplate(template.name, skips))
    return TemplateReport(usable, skipped, partial, len(examples))
