"""JSON-lines in and out for the judge commands: line-numbered errors, dotted field paths, atomic writes."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from runtime.artifacts import file_mode
from runtime.errors import UserError

MISSING = object()  # what `lookup` returns for an absent field (None is a value)


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """(1-based line number, parsed value) for every non-blank line; a line that is not JSON is a UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"input file {path} does not exist; check --input") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as UTF-8 text ({e}); pass a JSON-lines file") from e
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number} is not valid JSON ({e.msg} at column {e.colno}); "
                            "fix or remove that line") from e
    return rows


def lookup(record: Any, dotted: str) -> Any:
    """The value at a dotted path ("prompt.text") inside nested objects, or `MISSING` if any step is absent."""
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def text_field(record: Any, dotted: str, path: str | Path, number: int) -> str:
    """The string at `dotted` in one record, or a UserError naming the file, line and field."""
    value = lookup(record, dotted)
    if value is MISSING:
        raise UserError(f"{path}:{number} has no field {dotted!r}; fix that line or choose another --field")
    if not isinstance(value, str):
        raise UserError(f"{path}:{number}: field {dotted!r} is {type(value).__name__}, not a string; "
                        "point --field at the text to judge")
    return value


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` into a temporary sibling of `path`, renamed onto it only when complete."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a directory; pass a file name for --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would keep the file from everyone else
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically (see `write_text_atomic`)."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
