"""Toxicity judges for MM-TOXIC-QA: texts in, P(toxic) out, offline, torch-free.

`load_judge(name)` builds a judge by name. The default, "jigsaw-bilstm", agrees best with Perspective
labels on RealToxicityPrompts (see `runtime.judges.validate`); "hatesonar" is an independent second
opinion (other training data, other model family) for checking that a detoxified model did not merely
learn to evade one classifier. A text counts as harmful when its score reaches the judge's `threshold`.
Each judge's assets are converted once into the asset cache on first use.
"""
from __future__ import annotations

from typing import Any, Callable

from runtime.errors import UserError
from runtime.judges.base import Judge

DEFAULT_JUDGE = "jigsaw-bilstm"


def _jigsaw(**options: Any) -> Judge:
    from runtime.judges.jigsaw_bilstm import JigsawBiLSTMJudge
    return JigsawBiLSTMJudge(**options)


def _hatesonar(**options: Any) -> Judge:
    from runtime.judges.hatesonar import HateSonarJudge
    return HateSonarJudge(**options)


_FACTORIES: dict[str, Callable[..., Judge]] = {"jigsaw-bilstm": _jigsaw, "hatesonar": _hatesonar}
_OPTIONS = {"threshold", "batch_size"}


def judge_names() -> list[str]:
    """Names `load_judge` accepts."""
    return sorted(_FACTORIES)


def load_judge(name: str = DEFAULT_JUDGE, **options: Any) -> Judge:
    """The judge `name`; `options` (threshold, batch_size) go to its constructor."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UserError(f"unknown judge {name!r}; choose one of: {', '.join(judge_names())}") from None
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise UserError(f"judge {name!r} does not take {unknown}; its options are {sorted(_OPTIONS)}")
    return factory(**options)


__all__ = ["DEFAULT_JUDGE", "Judge", "judge_names", "load_judge"]
