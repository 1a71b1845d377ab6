"""--limit and --condition-limit select the first items of each condition, in dataset order."""
from __future__ import annotations

import pytest

from runtime.errors import UserError
from runtime.mmtoxicqa.evaluate import condition_limits, limit_items


class _It:
    def __init__(self, condition: str, i: int):
        self.condition, self.id = condition, f"{condition}-{i}"


ITEMS = [_It(c, i) for i in range(5) for c in ("standard", "jailbreak", "visual")]


def test_condition_limit_overrides_the_global_limit_for_its_condition_only():
    got = limit_items(ITEMS, 3, condition_limits(["jailbreak=1"]))
    assert [it.id for it in got if it.condition == "jailbreak"] == ["jailbreak-0"]
    assert [it.id for it in got if it.condition == "standard"] == ["standard-0", "standard-1", "standard-2"]
    assert len(limit_items(ITEMS, None, {"visual": 2})) == 5 + 5 + 2


@pytest.mark.parametrize("value, needle", [("jailbreak", "CONDITION=N"), ("jailbreak=x", "CONDITION=N"),
                                           ("nope=3", "nope")])
def test_bad_condition_limits_name_the_problem(value, needle):
    with pytest.raises(UserError, match=needle):
        condition_limits([value])


def test_zero_limits_are_refused():
    with pytest.raises(UserError, match="jailbreak=0: the limit must be >= 1"):
        limit_items(ITEMS, 2, {"jailbreak": 0})
