"""The binding forced choice (benchmarks/binding_ceiling.py) asks about two-group scenes with the right contrast."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from runtime import scenes

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "binding_ceiling.py"
_spec = importlib.util.spec_from_file_location("binding_ceiling", _PATH)
ceiling = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ceiling  # its dataclass looks its module up there
_spec.loader.exec_module(ceiling)


def test_items_contrast_the_two_groups_of_each_scene():
    items = ceiling.binding_items(40)
    assert items and {it.kind for it in items} == {"colour", "shape"}
    for it in items:
        assert scenes.num_groups(it.scene.index) == 2 and len(it.groups) == 2
        (c1, s1), (c2, s2) = it.groups
        if it.kind == "colour":
            assert {it.right, it.other} == {c1, c2}
            asked = it.prefix.split()[1]
            owner = s1 if it.right == c1 else s2
            assert asked in (owner, scenes.plural(owner, 2))
        else:
            assert {it.right.rstrip("s"), it.other.rstrip("s")} == {s1, s2}
            asked_colour = it.prefix.split()[1]
            assert (asked_colour, it.right.rstrip("s")) in it.groups
        assert it.right != it.other


def test_text_forms_name_both_groups():
    it = ceiling.binding_items(40)[0]
    for form in ("caption", "is-sentences", "patch-words"):
        text = ceiling.TEXT[form](it)
        for colour, shape in it.groups:
            assert colour in text and shape in text, (form, text)
    assert ceiling.TEXT["none"](it) == ""
