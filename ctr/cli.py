"""`ctr` command line. Flags are generated from the config dataclasses (`ctr.config`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

from ctr.config import TRAIN_MODULE_OPTIONS, CTRConfig, TrainConfig


def _parse_type(annotation: str) -> tuple[Any, dict[str, Any]]:
    """argparse settings for a field annotation written as a string (PEP 563)."""
    ann = annotation.replace(" ", "").replace("|None", "")
    if ann.startswith("list["):
        inner = {"str": str, "int": int, "float": float}[ann[5:-1]]
        return inner, {"nargs": "*"}
    m = re.fullmatch(r"Literal\[(.*)\]", ann)
    if m:
        return str, {"choices": [c.strip("'\"") for c in m.group(1).split(",")]}
    return {"int": int, "float": float, "str": str}[ann], {}


def _add_bool(parser: argparse.ArgumentParser, name: str, default: bool, help_text: str) -> None:
    """--flag sets True and --no-flag False. Written out because argparse's
    BooleanOptionalAction reads any option starting with --no- as False, which inverts
    fields that are themselves named no_* (--no-codes, --no-eval)."""
    flag = "--" + name.replace("_", "-")
    parser.add_argument(flag, dest=name, action="store_true", default=default, help=help_text)
    if not name.startswith("no_"):
        parser.add_argument("--no-" + flag[2:], dest=name, action="store_false", help=argparse.SUPPRESS)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, only: tuple[str, ...] | None = None,
                       unset: str | None = None) -> None:
    """A flag per field (`only`: these fields). `unset`: every flag defaults to None, which
    means what this text says (the options of a nested config, filled in later)."""
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or is_config(f.type):
            continue  # a nested config gets its own flags
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if unset:
            otherwise = f", else {default!r}" if default not in (None, [], "") else ""
            default, help_text = None, f"{help_text} (default: {unset}{otherwise})"
        elif default not in (None, [], ""):
            help_text += f" (default: {default})"
        if str(f.type).replace(" ", "").replace("|None", "") == "bool":
            _add_bool(parser, f.name, default, help_text)
            continue
        typ, kw = _parse_type(str(f.type))
        kw["type"] = typ
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default,
                            help=help_text, **kw)


def is_config(annotation: Any) -> bool:
    return str(annotation).replace(" ", "").replace("|None", "") in ("CTRConfig",)


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls) if not is_config(f.type)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def cmd_train(args: argparse.Namespace) -> int:
    from ctr.train.metrics import summarize_run
    from ctr.train.trainer import plan_run, train
    names = {f.name for f in dataclasses.fields(TrainConfig)} | set(TRAIN_MODULE_OPTIONS)
    cfg = TrainConfig.from_flags(**{k: v for k, v in vars(args).items() if k in names})
    if args.print_config:  # the values the run would use: preset, recipe and --init-from's module
        print(json.dumps(dataclasses.asdict(plan_run(cfg)), indent=1))
        return 0
    from accelerate import PartialState
    final = train(cfg, stop_after=args.stop_after)
    if (PartialState().is_main_process and (Path(cfg.output_dir) / "metrics.jsonl").exists()
            and final.name == "final"):
        print(summarize_run(cfg.output_dir))
        print(f"\nmodel: {final}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ctr.inference.evaluate import EvalConfig, run_eval
    run_eval(dataclass_from_args(EvalConfig, args))
    return 0


def cmd_zero_label(args: argparse.Namespace) -> int:
    from ctr.adapt.zero_label import ZeroLabelConfig, run_zero_label
    run_zero_label(dataclass_from_args(ZeroLabelConfig, args))
    return 0


def cmd_few_shot(args: argparse.Namespace) -> int:
    from ctr.adapt.few_shot import FewShotConfig, run_few_shot
    run_few_shot(dataclass_from_args(FewShotConfig, args))
    return 0


def cmd_free_prompts(args: argparse.Namespace) -> int:
    from ctr.adapt.free_prompts import FreePromptConfig, train_free_prompts
    cfg = dataclass_from_args(FreePromptConfig, args)
    summary = train_free_prompts(cfg)
    print(f"{len(summary['tasks'])} free prompts, LM loss {summary['lm_loss_first']:.3f} -> "
          f"{summary['lm_loss_last10_mean']:.3f} (last 10 steps), held-in probe {summary['probe_lm_loss']}; "
          f"as a CTR model: {Path(cfg.output_dir) / 'final'} (ctr zero-label --checkpoint {cfg.output_dir})")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from ctr.adapt.audit import AuditConfig, run_audit
    run_audit(dataclass_from_args(AuditConfig, args))
    return 0


def cmd_codes(args: argparse.Namespace) -> int:
    """Print the code table of a checkpoint and its codebook health (task types from the T0
    manifest, where the tasks are T0's)."""
    from ctr.analysis.report import task_labels
    from ctr.analysis.stats import UNKNOWN
    from ctr.core.code_health import codebook_health
    from ctr.core.codes import format_table
    from ctr.core.loading import load_code_table
    table, config, _ = load_code_table(args.checkpoint)
    print(format_table(table))
    types = [None if t == UNKNOWN else t for t in task_labels(list(table), args.data_dir)[0]]
    health = codebook_health(list(table.values()), config["codebook_size"], types)
    print(f"\nCodebook health ({len(table)} tasks)\n\n{health.markdown()}")
    return 0


def take_positional_checkpoint(cfg, args: argparse.Namespace) -> None:
    """A positional CHECKPOINT is the same as --checkpoint; both at once must agree."""
    if args.checkpoint_path:
        if cfg.checkpoint and cfg.checkpoint != args.checkpoint_path:
            raise ValueError("give the checkpoint once: positionally or with --checkpoint")
        cfg.checkpoint = args.checkpoint_path


def cmd_analyze(args: argparse.Namespace) -> int:
    from ctr.analysis.options import AnalyzeConfig
    from ctr.analysis.report import run_analysis
    cfg = dataclass_from_args(AnalyzeConfig, args)
    take_positional_checkpoint(cfg, args)
    run_analysis(cfg)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ctr.inference.generation import GenerateConfig, run_generate
    run_generate(dataclass_from_args(GenerateConfig, args))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ctr.interop.export import run_export
    from ctr.interop.export_config import ExportConfig
    cfg = dataclass_from_args(ExportConfig, args)
    take_positional_checkpoint(cfg, args)
    run_export(cfg)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ctr.experiments.synth import SynthConfig, run_synth
    run_synth(dataclass_from_args(SynthConfig, args))
    return 0


def add_checkpoint_command(sub, name: str, help: str, config, func) -> None:
    """A subcommand whose CHECKPOINT may also be given positionally."""
    p = sub.add_parser(name, help=help)
    p.add_argument("checkpoint_path", nargs="?", metavar="CHECKPOINT",
                   help="CTR checkpoint (run folder, final/ or model folder)")
    add_dataclass_args(p, config)
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="multi-task training (stage 1: LM frozen; stage 2: all)",
                       )
    add_dataclass_args(p, TrainConfig)
    # the CTR module's options (TrainConfig.ctr), each on top of the codebook recipe
    add_dataclass_args(p, CTRConfig, only=TRAIN_MODULE_OPTIONS, unset="the codebook recipe's")
    p.add_argument("--stop-after", type=int, default=None,
                   help="end this call after N steps without a final save (time-sliced jobs)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved training config (preset and codebook recipe filled "
                        "in) as JSON and exit without training")
    p.set_defaults(func=cmd_train)
    from ctr.inference.evaluate import EvalConfig
    p = sub.add_parser("eval", help="T0-style rank-classification evaluation",
                       )
    add_dataclass_args(p, EvalConfig)
    p.set_defaults(func=cmd_eval)
    from ctr.adapt.few_shot import FewShotConfig
    from ctr.adapt.zero_label import ZeroLabelConfig
    p = sub.add_parser("zero-label", help="Code Ensemble: pick a training code without labels")
    add_dataclass_args(p, ZeroLabelConfig)
    p.set_defaults(func=cmd_zero_label)
    p = sub.add_parser("few-shot", help="Bitwise Search from k labelled shots (+ baselines)")
    add_dataclass_args(p, FewShotConfig)
    p.set_defaults(func=cmd_few_shot)
    from ctr.adapt.free_prompts import FreePromptConfig
    p = sub.add_parser("free-prompts", help="multi-task prompt tuning of the frozen LM: one free prompt "
                                            "per training task, the ceiling of a stage-1 codebook, saved "
                                            "as a CTR model that `ctr zero-label` scores")
    add_dataclass_args(p, FreePromptConfig)
    p.set_defaults(func=cmd_free_prompts)
    from ctr.adapt.audit import AuditConfig
    p = sub.add_parser("audit", help="selection-protocol audit: ours vs the authors' "
                                     "(selection on evaluation examples and gold labels)")
    add_dataclass_args(p, AuditConfig)
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("codes", help="print the code table of a checkpoint and its codebook health")
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", default=None, help="data folder whose T0 manifest gives the task "
                   "types (default: $CTR_DATA_DIR or ../shared/data)")
    p.set_defaults(func=cmd_codes)
    from ctr.analysis.options import AnalyzeConfig
    add_checkpoint_command(sub, "analyze", "what the codes mean: usage, association with task "
                           "types, distances, figures (+ --steer experiment)", AnalyzeConfig, cmd_analyze)
    from ctr.inference.generation import GenerateConfig
    p = sub.add_parser("generate", help="generate text under a code (--code or --task)")
    add_dataclass_args(p, GenerateConfig)
    # aliases: --model for --checkpoint, and a repeatable --input TEXT
    p.add_argument("--model", dest="checkpoint", default=argparse.SUPPRESS,
                   help="same as --checkpoint")
    p.add_argument("--input", dest="inputs", action="extend", nargs="+", default=argparse.SUPPRESS,
                   help="an input text; repeat for a batch")
    p.set_defaults(func=cmd_generate)
    from ctr.interop.export_config import ExportConfig
    add_checkpoint_command(sub, "export", "a code as a PEFT prompt-tuning adapter (--format peft) "
                           "or a [L, hidden] tensor (--format tensor)", ExportConfig, cmd_export)
    from ctr.experiments.synth import SynthConfig
    p = sub.add_parser("synth", help="synthetic compositional suite: train a tiny model from "
                                     "scratch, test codes on held-out combinations")
    add_dataclass_args(p, SynthConfig)
    p.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ctr.provenance import command_as
    args = build_parser().parse_args(argv)
    try:  # results record this command line (not the caller's sys.argv when argv is given)
        with command_as(None if argv is None else ["ctr", *argv]):
            return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ctr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
