"""The lanes' deep copy: what ``copy.deepcopy`` makes, quicker for plain data."""

from __future__ import annotations

import copy
from enum import IntEnum
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aioconveyor._lanes.copier import PLAIN_DEPTH, PLAIN_ITEMS, deep_copy

atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                  st.text(max_size=5), st.binary(max_size=5))
plain = st.recursive(
    atoms,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.one_of(st.text(max_size=5), st.integers()),
                                            inner, max_size=5)),
    max_leaves=30,
)


def containers(x: Any) -> list[Any]:
    """Every list and dict in ``x`` (depth first, with repeats)."""
    out: list[Any] = []
    stack = [x]
    while stack:
        y = stack.pop()
        if isinstance(y, list):
            out.append(y)
            stack.extend(y)
        elif isinstance(y, dict):
            out.append(y)
            stack.extend(y.values())
    return out


@given(plain)
def test_plain_data_is_copied_as_deepcopy_copies_it(data: Any) -> None:
    made = deep_copy(data)
    assert made == copy.deepcopy(data)
    ours = {id(c) for c in containers(data)}
    assert not ours & {id(c) for c in containers(made)}  # no container is shared


def test_shared_and_cyclic_containers_stay_shared() -> None:
    shared = [1, 2]
    made = deep_copy({"a": shared, "b": shared})
    assert made["a"] is made["b"] and made["a"] == shared and made["a"] is not shared
    loop: list[Any] = [1]
    loop.append(loop)
    again = deep_copy(loop)
    assert again[1] is again and again is not loop


def test_anything_else_is_deepcopied() -> None:
    class Level(IntEnum):
        HIGH = 1

    class Point:
        def __init__(self) -> None:
            self.xs = [1]

    data = {"level": Level.HIGH, "point": Point(), ("a", 1): {1, 2}, "t": (1, [2])}
    made = deep_copy(data)
    assert made["level"] is Level.HIGH
    assert made["point"].xs == [1] and made["point"].xs is not data["point"].xs
    assert made[("a", 1)] == {1, 2} and made[("a", 1)] is not data[("a", 1)]
    assert made["t"] == (1, [2]) and made["t"][1] is not data["t"][1]


def test_deep_and_wide_data_is_deepcopied_alike() -> None:
    deep: Any = 0
    for _ in range(PLAIN_DEPTH + 3):
        deep = [deep]
    wide = {str(i): [i] for i in range(PLAIN_ITEMS + 1)}
    for data in (deep, wide, list(range(PLAIN_ITEMS + 1))):
        made = deep_copy(data)
        assert made == data and made is not data
