"""Texts a password could leak into: exceptions (with their causes) and log records."""

from __future__ import annotations

import logging
import traceback


def exception_texts(exc: BaseException | None) -> list[str]:
    """str, repr and the formatted traceback of ``exc`` and of every cause and context."""
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        exc = exc.__cause__ or exc.__context__
    return out


def log_texts(records: list[logging.LogRecord]) -> list[str]:
    """Each record as a handler would write it: message, traceback and stack."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(r) + repr(r.__dict__.get("args")) for r in records]
