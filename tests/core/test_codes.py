"""ctr.core.codes: parsing, validation, codes files, usage statistics."""
from __future__ import annotations

import json

import pytest
import torch

from ctr.core.codes import (code_for_task, code_usage, format_table, parse_code,
                            read_checked_codes, read_codes_file, validate_code)


def test_parse_code_reads_spaces_and_names_the_flag_on_error():
    assert parse_code("3, 17,5") == [3, 17, 5]
    assert parse_code("1,2,") == [1, 2]
    with pytest.raises(ValueError, match="--my-flag '1,x'"):
        parse_code("1,x", "--my-flag")


@pytest.mark.parametrize("bad", [[1, 2], [1, 2, 8], [1, -1, 2], [1, 2.0, 3], "123", [True, 1, 2]])
def test_validate_code_rejects_wrong_length_range_and_types(bad):
    with pytest.raises(ValueError, match="where it came from: expected 3 integers in \\[0, 8\\)"):
        validate_code(bad, 3, 8, "where it came from")


def test_validate_code_returns_plain_ints():
    assert validate_code((0, 7, 3), 3, 8, "x") == [0, 7, 3]


def test_code_for_task_names_the_table_and_some_tasks():
    assert code_for_task({"a": [1]}, "a", "t") == [1]
    with pytest.raises(ValueError, match="task 'b': not in the code table \\(1 tasks, e.g. \\['a'\\]\\)"):
        code_for_task({"a": [1]}, "b", "the code table")


def test_codes_files_new_and_old_format_and_bad_exclusions(tmp_path):
    new, old, bad = tmp_path / "new.json", tmp_path / "old.json", tmp_path / "bad.json"
    new.write_text(json.dumps({"codes": {"t": [1, 2]}, "exclude": {"t": [4, 0]}}))
    old.write_text(json.dumps({"t": [1, 2]}))
    bad.write_text(json.dumps({"codes": {"t": [1, 2]}, "exclude": {"t": "0"}}))
    assert read_codes_file(new) == ({"t": [1, 2]}, {"t": [4, 0]})
    assert read_codes_file(old) == ({"t": [1, 2]}, {})
    with pytest.raises(ValueError, match=f"--codes-file {bad}: 'exclude'"):
        read_codes_file(bad)
    with pytest.raises(ValueError, match=f"--codes-file {new}: task t: expected 3 integers"):
        read_checked_codes(str(new), 3, 8)
    assert read_checked_codes(str(new), 2, 8) == {"t": [1, 2]}


def test_code_usage_counts_values_and_perplexity_per_position():
    codes = torch.tensor([[0, 1], [0, 2], [0, 3], [0, 4]])
    usage = code_usage(codes, 8)
    assert usage["codes_in_use"] == [1, 4]
    assert usage["perplexity"] == [1.0, pytest.approx(4.0)]
    assert usage["distinct_values"] == 5


def test_format_table_aligns_names():
    lines = format_table({"a": [1, 20], "long_name": [3, 4]}).splitlines()
    assert lines == ["a            1  20", "long_name    3   4"]
