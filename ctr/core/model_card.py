"""The model card: a README.md that `CTRModel.save_pretrained` writes beside the weights.

It says what the folder holds in the words a Hugging Face user expects: the backbone, the
stage, the tasks (and task types, when the caller knows them) it was trained on, how the
codebook is used (values per position and their perplexity, `ctr.core.codes.code_usage`),
the final metrics when the caller passes them, the command that made it, and how to load,
run or export it. Writing the card never fails a save: a section that cannot be built
says so in the card, and a card that cannot be written is a warning.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctr.core.adapter import DecoderOnlyAdapter, Seq2SeqAdapter
from ctr.core.codes import code_usage
from ctr.provenance import command_line

CARD_FILE = "README.md"
MAX_TABLE_ROWS = 100  # code-table rows shown; the full table is in code_table.json
# (backbone kind, where the soft prompt goes) per backbone adapter, in words
FAMILY_WORDS = {Seq2SeqAdapter: ("seq2seq (encoder-decoder)", "encoder input"),
                DecoderOnlyAdapter: ("decoder-only", "input")}


@dataclass
class CardInfo:
    """What the caller knows beyond the model itself; every field is optional."""

    metrics: Mapping[str, Any] | None = None  # e.g. the last metrics.jsonl record
    task_types: Mapping[str, str] | None = None  # task name -> task type
    stage: int | None = None  # 1 or 2; default: read from the config
    command: str | None = None  # default: this process's command line (ctr.provenance)


def write_model_card(folder: str | Path, model: Any, info: CardInfo | None = None,
                     final: str | Path | None = None) -> Path | None:
    """Write README.md into `folder` (a save in progress); `final` is where the folder will
    live (named in the commands of the card). Returns the card's path, or None (with a
    warning) when it could not be written: a save never fails because of its card."""
    try:
        path = Path(folder) / CARD_FILE
        path.write_text(model_card(model, info, public_path(final if final is not None else folder)))
        return path
    except Exception as e:  # noqa: BLE001  (the card is a courtesy, the weights are the save)
        warnings.warn(f"model card not written: {type(e).__name__}: {e}", stacklevel=2)
        return None


def public_path(path: str | Path) -> str:
    """`path` as it will be named once every atomic save around it has finished: a
    temporary folder `.NAME.tmp-...` (ctr.fileio.atomic_dir, e.g. a checkpoint being
    written) becomes NAME."""
    parts = [m.group(1) if (m := re.fullmatch(r"\.(.+)\.tmp-.+", part)) else part
             for part in Path(path).parts]
    return str(Path(*parts)) if parts else str(path)


def model_card(model: Any, info: CardInfo | None = None, where: str | Path = "MODEL") -> str:
    """The card's Markdown for a CTRModel (duck-typed: config, backbone, code_table)."""
    info = info or CardInfo()
    cfg = model.config
    table = _safe(lambda: model.code_table(), {}) if cfg.use_codes else {}
    name = cfg.backbone or "unknown backbone"
    parts = ["---", "library_name: ctr", "tags:", "- ctr", "- compositional-task-representations",
             "- soft-prompt", "---", "", f"# CTR model on {name}", ""]
    for title, build in (("", lambda: _overview(model, info)),
                         ("Tasks", lambda: _tasks(cfg, table, info)),
                         ("Code table", lambda: _code_table(cfg, table, info)),
                         ("Final metrics", lambda: _metrics(info)),
                         ("How it was made", lambda: _made_by(info)),
                         ("Use it", lambda: _usage(cfg, table, str(where)))):
        try:
            body = build()
        except Exception as e:  # noqa: BLE001  (one broken section keeps the others)
            body = f"_(this section could not be written: {type(e).__name__}: {e})_"
        if body:
            parts += ([f"## {title}", ""] if title else []) + [body, ""]
    return "\n".join(parts)


def _safe(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return default


def _stage(cfg: Any, info: CardInfo) -> str:
    if getattr(cfg, "lora", None):
        return ("2: codes and LoRA adapters trained (the adapter is in lora/, PEFT's format; "
                "the base weights are the original backbone's)")
    if info.stage == 1 or (info.stage is None and cfg.use_codes and not cfg.backbone_trained):
        return "1: codes trained, backbone frozen (its weights are the original backbone's)"
    if not cfg.use_codes:
        return ("multi-task prompted baseline: backbone trained, no codes" if cfg.backbone_trained
                else "backbone without codes")
    return "2: codes and backbone trained (the fine-tuned backbone is saved in backbone/)"


def _overview(model: Any, info: CardInfo) -> str:
    cfg = model.config
    bb = model.backbone
    kind, prompt_place = next((w for cls, w in FAMILY_WORDS.items() if isinstance(model.adapter, cls)),
                              (type(model.adapter).__name__, "input"))
    hidden = bb.get_input_embeddings().embedding_dim
    params = sum(p.numel() for p in bb.parameters())
    rows = [("backbone", f"`{cfg.backbone or '?'}`: {kind}, {bb.config.model_type}, hidden size "
                         f"{hidden}, {_count(params)} parameters"),
            ("stage", _stage(cfg, info))]
    if cfg.use_codes:
        rows += [("code", f"{cfg.code_length} positions x {cfg.codebook_size} values: a code becomes "
                          f"{cfg.code_length} soft-prompt vectors in front of the "
                          f"{prompt_place}"),
                 ("quantizer", f"{cfg.quantizer}, codebook init {cfg.codebook_init}, decoder init "
                               f"{cfg.decoder_init}")]
    rows += [("prompt format", f"input, then {cfg.target_delimiter!r}, then the target"
                               f"{' + EOS' if cfg.target_eos else ''} (ctr.core.prompt_format)"),
             ("tasks", str(cfg.num_tasks))]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def _tasks(cfg: Any, table: Mapping[str, list[int]], info: CardInfo) -> str:
    if not cfg.task_names:
        return ""
    types = dict(info.task_types or {})
    lines = [f"{cfg.num_tasks} training tasks."]
    if types:
        counts = Counter(types.get(t, "unknown") for t in cfg.task_names)
        lines += ["", "| task type | tasks |", "|---|---:|"]
        lines += [f"| {t} | {n} |" for t, n in sorted(counts.items())]
    else:
        lines.append("Task types were not recorded with this save (the config knows task names only).")
    if not table:  # without codes the task list is all there is
        lines += ["", ", ".join(f"`{t}`" for t in cfg.task_names)]
    return "\n".join(lines)


def _code_table(cfg: Any, table: Mapping[str, list[int]], info: CardInfo) -> str:
    if not cfg.use_codes or not table:
        return ""
    usage = code_usage(torch.tensor(list(table.values()), dtype=torch.long), cfg.codebook_size)
    lines = [f"{len(table)} task codes use {usage['distinct_values']} distinct values of "
             f"{cfg.codebook_size}. Per position: the values in use and their perplexity "
             "(exp of the entropy of the value distribution; 1 = every task shares one value).",
             "", "| position | " + " | ".join(str(i) for i in range(cfg.code_length)) + " |",
             "|---|" + "---:|" * cfg.code_length,
             "| values in use | " + " | ".join(map(str, usage["codes_in_use"])) + " |",
             "| perplexity | " + " | ".join(f"{p:.2f}" for p in usage["perplexity"]) + " |", ""]
    types = dict(info.task_types or {})
    head = "| task | type | code |\n|---|---|---|" if types else "| task | code |\n|---|---|"
    lines.append(head)
    for name, code in list(table.items())[:MAX_TABLE_ROWS]:
        cells = [f"`{name}`"] + ([types.get(name, "unknown")] if types else []) + [" ".join(map(str, code))]
        lines.append("| " + " | ".join(cells) + " |")
    if len(table) > MAX_TABLE_ROWS:
        lines.append(f"\n{len(table) - MAX_TABLE_ROWS} more in code_table.json.")
    return "\n".join(lines)


def _metrics(info: CardInfo) -> str:
    if not info.metrics:
        return ""
    lines = ["| metric | value |", "|---|---:|"]
    for k, v in info.metrics.items():
        lines.append(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


def _made_by(info: CardInfo) -> str:
    return f"```\n{info.command or command_line()}\n```"


def _usage(cfg: Any, table: Mapping[str, list[int]], where: str) -> str:
    task = next(iter(table), None)
    pick = f"--task {task}" if task else "--code " + ",".join(["0"] * cfg.code_length)
    lines = ["```python", "from ctr.core.model import CTRModel",
             f"model = CTRModel.from_pretrained({where!r})"]
    if cfg.use_codes:
        lines.append("print(model.code_table())  # the code of every training task")
    lines += ["```", "", "```"]
    if cfg.use_codes:
        lines += [f"ctr generate --checkpoint {where} {pick} --input \"...\"",
                  f"ctr export {where} {pick} --format peft --output adapter/   # a PEFT prompt-tuning adapter",
                  f"python -m ctr.interop.lm_eval_model --model ctr --model_args checkpoint={where}"
                  + (f",task={task}" if task else "") + " --tasks TASK"]
    else:
        lines += [f"ctr eval --model {where}",
                  f"python -m ctr.interop.lm_eval_model --model ctr --model_args checkpoint={where} --tasks TASK"]
    lines.append("```")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"
