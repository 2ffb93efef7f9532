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
    from ctr.presets import CODEBOOK_RECIPES
    out = tmp_path / "run"
    assert main(["train", "--preset", "cpu-small", "--output-dir", str(out), "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    # None fields filled from the preset's codebook recipe, a flag given on the line kept
    assert cfg["codebook_recipe"] == "stable"
    assert {k: cfg[k] for k in CODEBOOK_RECIPES["stable"]} == CODEBOOK_RECIPES["stable"]
    assert main(["train", "--codebook-recipe", "paper", "--quantizer", "ema", "--output-dir", str(out),
                 "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["quantizer"] == "ema" and cfg["codebook_recipe"] == "paper"
    assert not out.exists()  # nothing trained, nothing written
