"""Reading MM-TOXIC-QA run directories (report.json, and generations.jsonl when present), with checks that
turn a missing, corrupt or foreign file into a UserError naming the file and the fix."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import UserError
from runtime.mmtoxicqa.runner import GENERATIONS_FILE, REPORT_FILE, REPORT_FORMAT, REPORT_VERSION

_FIX = "rerun `python -m runtime.mmtoxicqa run ... --out DIR` and pass DIR/report.json"
# Rate fields the gate and the report read: each needs integer hits <= total.
RATE_FIELDS = ("harmful_rate", "visual_accuracy", "degenerate_rate")


@dataclass(frozen=True)
class Run:
    """One benchmark run: where its report is, the report, its generation rows (None when absent), a label."""

    path: Path
    report: dict[str, Any]
    rows: list[dict[str, Any]] | None
    label: str


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_rate(report: dict[str, Any], key: str, path: Path) -> None:
    r = report.get(key)
    if not isinstance(r, dict):
        raise UserError(f"{path}: field {key!r} is missing or not an object; the report is corrupt ({_FIX})")
    hits, total = r.get("hits"), r.get("total")
    if not (isinstance(hits, int) and isinstance(total, int) and 0 <= hits <= total):
        raise UserError(f"{path}: {key} needs integer hits <= total, got hits={hits!r}, total={total!r}; "
                        f"the report is corrupt ({_FIX})")


def check_report(report: Any, path: Path) -> dict[str, Any]:
    """Return `report` if it is an MM-TOXIC-QA report of the version this toolchain reads, else raise."""
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        got = report.get("format") if isinstance(report, dict) else type(report).__name__
        raise UserError(f"{path} is not an MM-TOXIC-QA report (format {got!r}, expected {REPORT_FORMAT!r}); "
                        f"pass the report.json written by python -m runtime.mmtoxicqa run")
    version = report.get("format_version")
    if version != REPORT_VERSION:
        raise UserError(f"{path} has report format version {version!r}; this toolchain reads version "
                        f"{REPORT_VERSION}. Rerun the benchmark with this version of the toolchain")
    for key in RATE_FIELDS:
        _check_rate(report, key, path)
    hr = report["harmful_rate"]
    if not (isinstance(hr.get("n"), int) and isinstance(hr.get("k"), int) and hr["n"] * hr["k"] == hr["total"]):
        raise UserError(f"{path}: harmful_rate needs n items x k samples = total, got n={hr.get('n')!r}, "
                        f"k={hr.get('k')!r}, total={hr['total']}; the report is corrupt ({_FIX})")
    ppl = report.get("perplexity")
    if ppl is not None and not (_number(ppl) and ppl > 0):
        raise UserError(f"{path}: perplexity must be a positive number or null, got {ppl!r}; the report is corrupt")
    for key in ("settings", "judge"):
        if not isinstance(report.get(key), dict):
            raise UserError(f"{path}: field {key!r} is missing or not an object; the report is corrupt ({_FIX})")
    return report


def report_path(path: str | os.PathLike) -> Path:
    """A run's report.json, given either the file or its run directory."""
    p = Path(path)
    return p / REPORT_FILE if p.is_dir() else p


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check one report.json (or a run directory holding one)."""
    p = report_path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist; {_FIX}")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({e}); the file is truncated or corrupt: {_FIX}") from e
    return check_report(report, p)


def read_generations(path: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The rows of the generations.jsonl beside a report.json, or None when there is none."""
    p = report_path(path).with_name(GENERATIONS_FILE)
    if not p.is_file():
        return None
    rows = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{lineno} is not valid JSON ({e}); the file is corrupt: {_FIX}") from e
        if not (isinstance(row, dict) and isinstance(row.get("response"), str) and _number(row.get("toxicity"))
                and isinstance(row.get("condition"), str) and isinstance(row.get("id"), str)):
            raise UserError(f"{p}:{lineno} lacks id, condition, response or toxicity; the file is corrupt: {_FIX}")
        rows.append(row)
    return rows


def default_label(report: dict[str, Any], path: Path) -> str:
    """A short name for a run from its model provenance: "name (backend, dtype)", else the run directory."""
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    name = next((str(model[k]) for k in ("model", "name", "bundle", "path") if model.get(k)), None)
    if name is None:
        name = path.parent.name or str(path)
    elif "/" in name:
        name = Path(name).name
    extras = [str(model[k]).replace("torch.", "") for k in ("backend", "precision", "dtype") if model.get(k)]
    return f"{name} ({', '.join(extras)})" if extras else name


def load_run(path: str | os.PathLike, label: str | None = None, with_rows: bool = True) -> Run:
    """A run from its report.json (or run directory); `with_rows` also reads generations.jsonl if present."""
    p = report_path(path)
    report = read_report(p)
    rows = read_generations(p) if with_rows else None
    return Run(p, report, rows, label or default_label(report, p))


def unique_labels(runs: list[Run]) -> list[Run]:
    """The runs with labels made unique by appending their run directory where two coincide."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    labels = [r.label if counts[r.label] == 1 else f"{r.label} [{r.path.parent.name or r.path}]" for r in runs]
    labels = [f"{lab} #{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]
    return [Run(r.path, r.report, r.rows, lab) for r, lab in zip(runs, labels)]
