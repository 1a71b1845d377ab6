"""Input checks shared by the judges."""
from __future__ import annotations

import pytest

from runtime.errors import UserError
from runtime.judges.texts import as_texts, check_settings


def test_as_texts_accepts_any_sequence_of_strings():
    assert as_texts(("a", "", "c"), "j") == ["a", "", "c"]
    assert as_texts([], "j") == []


@pytest.mark.parametrize("bad, message", [("one text", "pass \\[text\\]"), (["ok", None], "item 1 is NoneType"),
                                          ([b"bytes"], "item 0 is bytes")])
def test_as_texts_names_the_problem(bad, message):
    with pytest.raises(UserError, match=message):
        as_texts(bad, "j")


@pytest.mark.parametrize("threshold, batch_size", [(0.0, 8), (1.0, 8), (-0.1, 8), (0.5, 0)])
def test_check_settings_refuses_nonsense(threshold, batch_size):
    with pytest.raises(UserError, match="threshold|batch_size"):
        check_settings(threshold, batch_size)
    check_settings(0.5, 1)
