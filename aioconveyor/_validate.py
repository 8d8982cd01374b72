"""Argument checks shared by every settings object: one clear message per mistake."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


def number(name: str, value: object) -> float:
    """Return ``value`` as a float; reject bools, strings and other non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive(name: str, value: object) -> float:
    v = number(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def non_negative(name: str, value: object) -> float:
    v = number(name, value)
    if v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def optional_positive(name: str, value: object) -> float | None:
    return None if value is None else positive(name, value)


def integer(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def optional_integer(name: str, value: object, *, minimum: int) -> int | None:
    return None if value is None else integer(name, value, minimum=minimum)


def choice(name: str, value: object, enum: type[E]) -> E:
    """Accept an enum member or its string value."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        for member in enum:
            if member.value == value:
                return member
    allowed = ", ".join(repr(m.value) for m in enum)
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def callable_(name: str, value: Any) -> Any:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {value!r} ({type(value).__name__})")
    return value
