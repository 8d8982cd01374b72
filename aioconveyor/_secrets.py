"""Keeping passwords out of reprs, logs and error messages (shared by the PostgreSQL parts).

``mask_dsn`` shows a DSN with its password replaced by ``***``; ``secrets_of`` lists every
spelling of the password(s) so ``scrub`` can remove them from any text, such as a server's
error message that repeats the DSN.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from ssl import SSLContext

MASK = "***"

PG_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def mask_dsn(dsn: str | None) -> str | None:
    """``dsn`` with any password (user info or ``password=`` query) replaced by ``***``."""
    if dsn is None:
        return None
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return MASK  # unparsable: show nothing rather than risk showing a secret
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{hosts}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(k == "password" for k, _ in pairs):
            query = "&".join(
                f"{urllib.parse.quote(k, safe='')}="
                f"{MASK if k == 'password' else urllib.parse.quote(v, safe='')}"
                for k, v in pairs
            )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secrets_of(dsn: str | None, *passwords: object) -> tuple[str, ...]:
    """Every spelling of the DSN's password (and of ``passwords``), longest first."""
    found: set[str] = {p for p in passwords if isinstance(p, str)}
    if dsn:
        try:
            parts = urllib.parse.urlsplit(dsn)
        except ValueError:
            return (dsn,)  # unparsable: the whole thing might be a secret
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            raw = userinfo.partition(":")[2]
            found.update({raw, urllib.parse.unquote(raw)})
        found.update(v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                     if k == "password")
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def check_pg_ssl(ssl: object) -> None:
    """What asyncpg accepts as ``ssl``: None, a bool, an SSLContext or an sslmode name."""
    if ssl is None or isinstance(ssl, bool | SSLContext):
        return
    if isinstance(ssl, str):
        if ssl not in PG_SSL_MODES:
            raise ValueError(f"ssl must be one of {', '.join(map(repr, PG_SSL_MODES))}, a bool "
                             f"or an ssl.SSLContext, got {ssl!r}")
        return
    raise TypeError(f"ssl must be a bool, an sslmode str or an ssl.SSLContext, got {ssl!r}")
