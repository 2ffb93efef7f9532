"""What both adaptations share: options, the model and candidate codes, the templates
selection may use.

Candidates are the distinct codes of the training tasks (or of --candidates-file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ctr.adapt.authors_protocol import check_protocol, label_balanced_eval
from ctr.config import opt
from ctr.inference.scope import EvalScope
from ctr.core.codes import read_codes_file
from ctr.core.loading import load_model
from ctr.core.model import CTRModel
from ctr.inference.evaluate import EvalConfig
from ctr.inference.scoring import RankScorer
from ctr.tasks.registry import get_task, list_tasks, render_prompts, select_templates, task_templates, usable_templates
from ctr.tasks.splits import AdaptSplit, few_shot, unlabeled_inputs
from ctr.tasks.templates import RenderError


@dataclass
class AdaptCommon(EvalScope):
    """Options shared by the adaptation commands."""

    checkpoint: str = opt("runs/ctr", "CTR checkpoint: a run folder, its final/ or a model folder")
    max_templates: int | None = opt(3, "use the first N usable templates for selection (speed)")
    candidates_file: str | None = opt(None, "JSON {name: code} of candidate codes, or a codes.json "
                                            "(default: the checkpoint's training-task codes)")
    eval_max_templates: int | None = opt(None, "evaluate with the first N usable templates only")
    no_eval: bool = opt(False, "only select; do not evaluate")
    output_dir: str = opt("runs/adapt", "where selection and evaluation results go")
    protocol: Literal["ours", "authors"] = opt(
        "ours", "ours: selection never reads labels or evaluation examples; authors: the released "
                "code's protocol (selection examples from the evaluation set, label-balanced, "
                "candidates filtered by gold label shares), for audits only")

    def __post_init__(self) -> None:
        check_protocol(self.protocol)

    def selection_split(self, task, n: int, labelled: bool) -> AdaptSplit:
        """The examples selection may use (n unlabelled inputs, or n labelled shots)."""
        if self.protocol == "authors":
            return label_balanced_eval(task, n, self.seed, self.data_dir)
        return (few_shot if labelled else unlabeled_inputs)(task, n, self.seed, self.data_dir)

    def eval_config(self, tasks: list[str], out: Path, **kw: Any) -> EvalConfig:
        """The evaluation that follows an adaptation: same examples, templates, seed."""
        return EvalConfig(model=self.checkpoint, **self.scope(), max_templates=self.eval_max_templates,
                          exclude_indices=str(out / "exclude.json"), output_dir=str(out), **kw)


def prepare_adaptation(cfg: AdaptCommon
                       ) -> tuple[CTRModel, list[str], list[tuple[list[int], list[str]]], RankScorer, Path]:
    """Model, task names, candidate codes, scorer and output folder of an adaptation run."""
    model = load_model(cfg.checkpoint, backbone_ok=False)  # adaptation needs a CTR model
    if not model.config.use_codes:
        raise ValueError(f"--checkpoint {cfg.checkpoint}: a model without codes has no codes to adapt")
    tasks = [get_task(t).name for t in (cfg.tasks or [t.name for t in list_tasks(cfg.suite)])]
    candidates = candidate_codes(model, cfg.candidates_file)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return model, tasks, candidates, RankScorer(model, cfg.batch_size), out


def candidate_codes(model: CTRModel, candidates_file: str | None = None) -> list[tuple[list[int], list[str]]]:
    """Distinct candidate codes, each with the training tasks that have it."""
    table = (read_codes_file(candidates_file, "--candidates-file")[0] if candidates_file
             else model.code_table())
    if not table:
        raise ValueError("no candidate codes: the checkpoint has no training tasks; pass --candidates-file")
    grouped: dict[tuple[int, ...], list[str]] = {}
    for name, code in table.items():
        try:
            model.check_codes(torch.tensor(code))
        except ValueError as e:
            where = f"--candidates-file {candidates_file}" if candidates_file else "code table"
            raise ValueError(f"{where}: {name}: {e}") from None
        grouped.setdefault(tuple(code), []).append(name)
    return [(list(c), names) for c, names in grouped.items()]


def selection_templates(task, cfg: AdaptCommon, examples, labelled: bool = False) -> list:
    """The templates to select with, first N, judged on the selection examples themselves
    (never on evaluation examples): for unlabelled inputs label-free (the prompt and
    choices render); for labelled shots as `ctr eval` judges, with the shots' labels."""
    if labelled:
        templates = usable_templates(task, names=cfg.templates or None, root=cfg.data_dir,
                                     examples=examples).usable
    else:
        templates = task_templates(task, cfg.data_dir)
        templates = (select_templates(templates, cfg.templates) if cfg.templates
                     else [t for t in templates if t.original_task])
        templates = [t for t in templates
                     if any(not isinstance(p, RenderError) for _, p in render_prompts(t, examples))]
    return templates[: cfg.max_templates] if cfg.max_templates else templates
