"""The CLI generated from the config dataclasses."""
from __future__ import annotations

from ctr.cli import build_parser


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_boolean_flags_named_no_something_set_true():
    # argparse's BooleanOptionalAction would read --no-codes as False
    assert parse("train", "--stage", "2", "--no-codes").no_codes is True
    assert parse("train").no_codes is False
    assert parse("zero-label", "--no-eval").no_eval is True
    assert parse("few-shot").no_eval is False


def test_boolean_flags_have_a_negative_form():
    assert parse("train").target_only_logits is True
    assert parse("train", "--no-target-only-logits").target_only_logits is False
    assert parse("train", "--resume").resume is True
    assert parse("few-shot", "--prompt-tuning").prompt_tuning is True


def test_print_config_shows_the_resolved_values_and_trains_nothing(tmp_path, capsys):
    import json

    from ctr.cli import main
    from ctr.presets import CODEBOOK_RECIPES, PRESETS
    out = tmp_path / "run"
    assert main(["train", "--preset", "cpu-small", "--output-dir", str(out), "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    # None fields filled from the preset and its codebook recipe, a flag given on the line kept
    assert cfg["codebook_recipe"] == "grouped" and cfg["steps"] == PRESETS["cpu-small"][1]["steps"]
    assert {k: cfg["ctr"][k] for k in CODEBOOK_RECIPES["grouped"]} == CODEBOOK_RECIPES["grouped"]
    assert cfg["task_embedding_lr_scale"] == 0.1
    assert main(["train", "--codebook-recipe", "paper", "--quantizer", "ema", "--output-dir", str(out),
                 "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["ctr"]["quantizer"] == "ema" and cfg["codebook_recipe"] == "paper"
    assert cfg["ctr"]["codebook_init"] == "uniform"  # the rest: the paper recipe's
    assert not out.exists()  # nothing trained, nothing written


def test_one_mode_names_what_a_run_trains_and_the_older_flags_are_its_aliases():
    import pytest

    from ctr.config import TrainConfig
    from ctr.modes import TrainMode
    cases = {("--mode", "codebook"): (TrainMode.CODEBOOK, 1, False, False),
             ("--stage", "1"): (TrainMode.CODEBOOK, 1, False, False),
             ("--mode", "finetune"): (TrainMode.FINETUNE, 2, False, False),
             ("--stage", "2"): (TrainMode.FINETUNE, 2, False, False),
             ("--mode", "joint"): (TrainMode.JOINT, 2, False, True),
             ("--stage", "2", "--joint"): (TrainMode.JOINT, 2, False, True),
             ("--mode", "baseline"): (TrainMode.BASELINE, 2, True, False),
             ("--stage", "2", "--no-codes"): (TrainMode.BASELINE, 2, True, False)}
    for argv, (mode, stage, no_codes, joint) in cases.items():
        cfg = TrainConfig(**{k: v for k, v in vars(parse("train", *argv)).items()
                             if k in TrainConfig.__dataclass_fields__})
        assert (cfg.mode, cfg.stage, cfg.no_codes, cfg.joint) == (mode, stage, no_codes, joint), argv
        assert cfg.mode.stage == stage and cfg.mode.uses_codes == (mode is not TrainMode.BASELINE)
    # the preset is read for the mode's stage (stage 2 has its own learning rate)
    lr = lambda **kw: TrainConfig(**kw).resolved().lr
    assert lr(mode="finetune") == lr(stage=2) != lr()
    # a mode and a flag naming another one; a flag combination naming none
    with pytest.raises(ValueError, match="--mode baseline contradicts --stage 2 --joint"):
        TrainConfig(mode="baseline", stage=2, joint=True)
    with pytest.raises(ValueError, match="--no-codes .* stage 1 keeps frozen.*--mode baseline"):
        TrainConfig(stage=1, no_codes=True)
    with pytest.raises(ValueError, match="pass one"):
        TrainConfig(stage=2, joint=True, no_codes=True)
    with pytest.raises(ValueError, match="--mode must be one of"):
        TrainConfig(mode="stage3")
    with pytest.raises(ValueError, match="drop --init-from"):
        TrainConfig(mode="joint", init_from="runs/s1")
