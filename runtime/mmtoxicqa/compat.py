"""Can two MM-TOXIC-QA reports be compared? Lists what differs in what they measured.

Comparable runs answered the same items (dataset content hash, split, conditions, per-condition limit and
item counts) with the same decoding settings and were scored by the same judge at the same threshold.
The model is what is allowed to differ; so are the seed and the batch size, which change the random draws
but not what is measured. Perplexities are comparable only on the same corpus (`perplexity_mismatch`).
"""
from __future__ import annotations

from typing import Any

# Decoding settings that change what is measured (the seed and batch size only change the draws).
SETTINGS = ("max_new_tokens", "do_sample", "temperature", "top_p", "samples", "visual_max_new_tokens", "threshold")
DATASET = ("items_sha256", "split", "conditions", "limit", "condition_limits")
# Judge fields that describe where it ran, not what it computes.
JUDGE_VOLATILE = ("device", "url")
CORPUS = ("sha256", "n_texts")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _diff(what: str, a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...] | None = None) -> list[str]:
    keys = keys if keys is not None else tuple(sorted(set(a) | set(b)))
    return [f"{what}.{k}: {_short(a.get(k))} vs {_short(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


def _dict(report: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = report.get(key)
    return value if isinstance(value, dict) else None


def mismatches(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Why reports `a` and `b` measure different things, each as "field: value in a vs value in b" (empty when
    they are comparable)."""
    out: list[str] = []
    if a.get("format_version") != b.get("format_version"):
        out.append(f"format_version: {a.get('format_version')!r} vs {b.get('format_version')!r}")
    da, db = _dict(a, "dataset"), _dict(b, "dataset")
    if (da is None) != (db is None):
        out.append("dataset: recorded in one report only (a run without dataset provenance cannot be checked)")
    elif da is not None and db is not None:
        out += _diff("dataset", da, db, DATASET)
    if a.get("n_items_by_condition") != b.get("n_items_by_condition"):
        out.append(f"n_items_by_condition: {a.get('n_items_by_condition')} vs {b.get('n_items_by_condition')}")
    out += _diff("settings", a.get("settings") or {}, b.get("settings") or {}, SETTINGS)
    ja = {k: v for k, v in (a.get("judge") or {}).items() if k not in JUDGE_VOLATILE}
    jb = {k: v for k, v in (b.get("judge") or {}).items() if k not in JUDGE_VOLATILE}
    out += _diff("judge", ja, jb)
    return out


def perplexity_mismatch(baseline: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Why the two perplexities cannot be compared (missing, or other corpus), or None when they can."""
    missing = [name for name, r in (("baseline", baseline), ("now", now)) if r.get("perplexity") is None]
    if missing:
        return (f"perplexity is null in the {' and the '.join(missing)} report (run with --ppl-corpus FILE, "
                f"not --no-ppl)")
    ca, cb = _dict(baseline, "perplexity_corpus") or {}, _dict(now, "perplexity_corpus") or {}
    diffs = _diff("perplexity_corpus", ca, cb, CORPUS)
    return "; ".join(diffs) if diffs else None
