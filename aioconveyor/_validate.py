"""Argument checks shared by every constructor: one clear message per mistake.

Every check raises :class:`~aioconveyor.SettingError` carrying the argument's
``name`` and ``value``, with a message that names both
(``queue_size must be an int >= 1, got 0``). Each returns the checked (normalised) value,
so a constructor reads ``self.size = _validate.integer("size", size, minimum=1)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, NoReturn, TypeVar

from ._errors import SettingError

__all__ = [
    "boolean",
    "callable_",
    "choice",
    "conflict",
    "fail",
    "integer",
    "logger",
    "non_negative",
    "number",
    "one_of",
    "optional_integer",
    "optional_positive",
    "path",
    "positive",
    "str_mapping",
    "text",
]

E = TypeVar("E", bound=Enum)


def fail(name: str, value: object, reason: str, *, subject: str | None = None) -> NoReturn:
    """Raise the :class:`SettingError` for ``name``; ``reason`` is the text after the name."""
    raise SettingError(name, value, reason, subject=subject)


def _kind(value: object) -> str:
    return type(value).__name__


def conflict(name: str, value: object, other: str, why: str = "") -> NoReturn:
    """``name`` was given together with ``other``, which makes it meaningless or ambiguous."""
    fail(name, value, f"cannot be combined with {other}{f' ({why})' if why else ''}; "
                      f"got {name}={value!r}")


def number(name: str, value: object, *, bound: str = "") -> float:
    """Return ``value`` as a float; reject bools, strings, other non-numbers, nan and inf.
    ``bound`` (``"> 0"``) is only for the message."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(name, value, f"must be a number, got {value!r} ({_kind(value)})")
    if not math.isfinite(value):
        fail(name, value, f"must be a finite number{' ' + bound if bound else ''}, "
                          f"got {value!r}")
    return float(value)


def positive(name: str, value: object) -> float:
    v = number(name, value, bound="> 0")
    if v <= 0:
        fail(name, value, f"must be a finite number > 0, got {value!r}")
    return v


def non_negative(name: str, value: object) -> float:
    v = number(name, value, bound=">= 0")
    if v < 0:
        fail(name, value, f"must be a finite number >= 0, got {value!r}")
    return v


def optional_positive(name: str, value: object) -> float | None:
    return None if value is None else positive(name, value)


def integer(name: str, value: object, *, minimum: int | None, maximum: int | None = None,
            unit: str = "") -> int:
    """An int (not a bool) in ``minimum..maximum`` (``None``: unbounded)."""
    if minimum is None:
        expected = "an int"
    elif maximum is None:
        expected = f"an int >= {minimum}"
    else:
        expected = f"an int in {minimum}..{maximum}"
    if unit:
        expected += f" ({unit})"
    if isinstance(value, bool) or not isinstance(value, int):
        fail(name, value, f"must be {expected}, got {value!r} ({_kind(value)})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        fail(name, value, f"must be {expected}, got {value!r}")
    return value


def optional_integer(name: str, value: object, *, minimum: int | None,
                     maximum: int | None = None) -> int | None:
    return None if value is None else integer(name, value, minimum=minimum, maximum=maximum)


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        fail(name, value, f"must be a bool, got {value!r}")
    return value


def text(name: str, value: object, *, subject: str | None = None,
         nul: bool = True) -> str:
    """A non-empty str; ``nul=False`` also rejects NUL characters."""
    if not isinstance(value, str) or not value:
        fail(name, value, f"must be a non-empty str, got {value!r}", subject=subject)
    if not nul and "\0" in value:
        fail(name, value, f"cannot contain a NUL character, got {value!r}", subject=subject)
    return value


def secret_text(name: str, value: object) -> str | None:
    """None or a str that may hold a password (a DSN, a URL): a mistake is reported by its
    type only, so the value never reaches an error message."""
    if value is not None and not isinstance(value, str):
        fail(name, _kind(value), f"must be a str or None, got {_kind(value)}")
    return value


def path(name: str, value: object) -> str | os.PathLike[str]:
    """A non-empty ``str`` or ``os.PathLike`` file path."""
    if not isinstance(value, str | os.PathLike):
        fail(name, value, f"must be a str or os.PathLike file path, got {value!r}")
    if not os.fspath(value):
        fail(name, value, f"must be a non-empty file path, got {value!r}")
    return value


def choice(name: str, value: object, enum: type[E]) -> E:
    """Accept an enum member or its string value."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        for member in enum:
            if member.value == value:
                return member
    allowed = ", ".join(repr(m.value) for m in enum)
    fail(name, value, f"must be one of {allowed}, got {value!r}")


def one_of(name: str, value: object, allowed: Iterable[object]) -> Any:
    """``value`` if it is one of ``allowed`` (compared with ``==``, bools excluded)."""
    options = list(allowed)
    if isinstance(value, bool) or value not in options:
        fail(name, value, f"must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def callable_(name: str, value: Any) -> Any:
    if not callable(value):
        fail(name, value, f"must be callable, got {value!r} ({_kind(value)})")
    return value


def str_mapping(name: str, value: object) -> dict[str, str] | None:
    """``None`` or a mapping of str to str (e.g. server settings), copied."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        fail(name, value, f"must be a mapping or None, got {value!r}")
    for k, v in value.items():
        if not isinstance(k, str):
            fail(name, value, f"keys must be str, got {k!r}")
        if not isinstance(v, str):
            fail(f"{name}[{k!r}]", v, f"must be a str, got {v!r}")
    return dict(value)


def logger(name: str, value: object) -> logging.Logger | None:
    if value is not None and not isinstance(value, logging.Logger):
        fail(name, value, f"must be a logging.Logger or None, got {value!r}")
    return value
