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
