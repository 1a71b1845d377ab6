"""JSON-lines helpers: line-numbered errors, dotted fields, atomic writes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.errors import UserError
from runtime.judges.jsonl import MISSING, lookup, read_jsonl, text_field, write_jsonl_atomic


def test_read_skips_blank_lines_and_keeps_numbers(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert read_jsonl(f) == [(1, {"a": 1}), (4, {"a": 2})]
    f.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UserError, match=r"in.jsonl:2 is not valid JSON"):
        read_jsonl(f)
    with pytest.raises(UserError, match="does not exist"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_dotted_fields() -> None:
    row = {"prompt": {"text": "hi", "toxicity": None}, "n": 3}
    assert lookup(row, "prompt.text") == "hi" and lookup(row, "prompt.toxicity") is None
    assert lookup(row, "prompt.missing") is MISSING and lookup(row, "n.deeper") is MISSING
    assert text_field(row, "prompt.text", "f.jsonl", 7) == "hi"
    with pytest.raises(UserError, match=r"f.jsonl:7 has no field 'prompt.missing'"):
        text_field(row, "prompt.missing", "f.jsonl", 7)
    with pytest.raises(UserError, match=r"f.jsonl:7: field 'n' is int, not a string"):
        text_field(row, "n", "f.jsonl", 7)


def test_atomic_write_leaves_only_the_result(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.jsonl"
    write_jsonl_atomic(out, [{"x": "é"}, {"x": 2}])
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [{"x": "é"}, {"x": 2}]

    def failing():
        yield {"x": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(out, failing())
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # old file intact, no temp file left
    assert out.read_text(encoding="utf-8").count("\n") == 2
