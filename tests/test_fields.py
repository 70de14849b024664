"""Config type checks: what a value read from JSON, TOML or Python must be for each annotation."""

from typing import Literal

import pytest

from polar_vbll.fields import conform, describe_type


@pytest.mark.parametrize(
    ("value", "hint", "ok", "stored"),
    [
        (3, float, True, 3.0),  # an integer is a number
        (True, int, False, True),  # a boolean is not an integer
        ("1e-3", float, False, "1e-3"),  # strings are never parsed into numbers
        ("no", bool, False, "no"),  # TOML's "no" is a string, not false
        (None, int | None, True, None),
        (2, int | None, True, 2),
        (("a", "b"), list[str], True, ["a", "b"]),
        ([1, "b"], list[int], False, [1, "b"]),
        ("ipm", Literal["ipm", "kpm"], True, "ipm"),
        ("all", Literal["ipm", "kpm"], False, "all"),
        (1, Literal["full", "diagonal"] | None, False, 1),
    ],
)
def test_conform(value, hint, ok, stored):
    assert conform(value, hint) == (ok, stored)


def test_describe_type():
    assert describe_type(bool | None) == "true or false or none"
    assert describe_type(Literal["ipm", "kpm"]) == "one of 'ipm', 'kpm'"
    assert describe_type(list[int]) == "a list of integers" and describe_type(float) == "a number"
