"""The consumer author's kit: what the built-in consumers use, public for everyone.

A consumer written outside aioconveyor can be as good as the built-ins with these names
only (the built-ins import nothing else, a test checks it):

* the data a consumer receives: :class:`Batch` of :class:`Record` (with ``batch_size > 1``),
  and the tick's facts: :func:`current_tick` / :class:`Tick`;
* what it raises to steer its lane: :class:`RetryAfter` (wait this long, then retry the
  same item), :class:`Rejected` (bad data, never retry), :class:`ConveyorError` (the root
  to derive a consumer's own errors from);
* :class:`SyncWorker`: blocking code (a driver, a file, ``urllib``) on a thread of the
  consumer's own, so the event loop never stalls; :data:`CANCEL_GRACE`: how long a call
  cancelled at its timeout may still take to clean up (roll back) before it counts as hung;
* :class:`LogLimiter`: one log line per burst of the same failure, not one per item;
* secrets out of ``repr``, logs and error messages: :func:`mask_dsn`, :func:`mask_url`,
  :func:`mask_text`, :func:`secrets_of` and :func:`scrub`; :func:`split_url` and
  :func:`encode_userinfo` read and pass on URLs whose password holds any character;
  :func:`check_pg_ssl` checks an asyncpg ``ssl=`` argument;
* clear errors at construction: :mod:`check` holds the argument checks the built-ins use
  (``check.positive("timeout", timeout)``, ``check.integer("port", port, minimum=1)``,
  ``check.fail(name, value, "why")``, ``check.conflict(...)``); each raises
  :class:`SettingError` naming the argument and the value, which the config runner turns
  into the TOML key.

See ``docs/writing-a-consumer.md`` for a complete consumer built with them.
"""

from __future__ import annotations

from typing import Final

from . import _validate as check
from ._consumer import Batch, Record
from ._errors import ConveyorError, Rejected, RetryAfter, SettingError, retry_after_seconds
from ._logs import LogLimiter
from ._secrets import (
    check_pg_ssl,
    encode_userinfo,
    mask_dsn,
    mask_text,
    mask_url,
    scrub,
    secrets_of,
    split_url,
)
from ._tick import Tick, current_tick
from ._workers import Caller, SyncWorker

__all__ = [  # noqa: RUF022 - plain sorted(), as tests/test_package.py checks every __all__
    "Batch",
    "CANCEL_GRACE",
    "ConveyorError",
    "LogLimiter",
    "Record",
    "Rejected",
    "RetryAfter",
    "SettingError",
    "SyncWorker",
    "Tick",
    "check",
    "check_pg_ssl",
    "current_tick",
    "encode_userinfo",
    "mask_dsn",
    "mask_text",
    "mask_url",
    "retry_after_seconds",
    "scrub",
    "secrets_of",
    "split_url",
]

CANCEL_GRACE: Final[float] = Caller.CANCEL_GRACE
"""Seconds an async consumer call cancelled at its timeout still gets to finish its cleanup
(a rollback, closing a cursor) before the lane counts it as hung. Keep such cleanup well
inside it (the PostgreSQL consumer bounds its rollback to 80 % of it)."""
