"""Counts with their nouns (``plural``): one message style for 1 and for many."""

from __future__ import annotations

from tomoseg.utils.format import plural


def test_plural_takes_the_singular_for_one_only():
    assert plural(1, "case") == "1 case"
    assert [plural(n, "slice") for n in (0, 2)] == ["0 slices", "2 slices"]
    assert plural(1, "branch", "branches") == "1 branch"
    assert plural(3, "branch", "branches") == "3 branches"
    assert plural("?", "epoch") == "? epochs"  # a count not recorded
