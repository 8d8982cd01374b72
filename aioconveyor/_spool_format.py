"""The spool's storage formats, by name.

A module of its own so that the consumer settings can name them without importing the
spool (sqlite3, json, pickle, decimal, uuid, zoneinfo: several ms of ``import aioconveyor``).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["SpoolFormat"]

SpoolFormat = Literal["json", "pickle"]
