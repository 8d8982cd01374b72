"""Keeping passwords out of reprs, logs and error messages: the one home for masking.

Everything that shows a DSN, a broker URL or a log line goes through here (the PostgreSQL
consumer and leader, the MQTT consumer, the TOML loader, the CLI's log handler, the demo):

* :func:`mask_dsn` / :func:`mask_url`: one URL or libpq keyword DSN with its password(s)
  replaced by ``***``;
* :func:`mask_text`: any text (a log line, an error message) with the passwords of the
  URLs and ``password=`` pairs it contains masked, and every known secret removed;
* :func:`secrets_of` lists every spelling of a DSN's password (raw and percent-decoded, and
  every way the string could be read) so that :func:`scrub` can remove them from a
  server's error message;
* :func:`encode_userinfo` percent-encodes a URL's user and password, so that a password
  written unencoded (``#``, ``/``, ``?``, ``@``...) reaches the server whole instead of
  being split by the driver's URL parser.

The user info of ``scheme://user:password@host...`` is found here, not by
:func:`urllib.parse.urlsplit` (which ends it at the first ``/``, ``?`` or ``#``, so an
unencoded password would be cut in two): it runs to the **last** ``@`` of the URL, as a
host never contains one. The one exception keeps an ``@`` in a query value readable
(``...@db/home?application_name=me@work``): when the host before the query looks like a
host and every later ``@`` stands in a query *value*, the user info ends before the host.
When in doubt the reading that masks more wins.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from ssl import SSLContext

from ._validate import fail

__all__ = [
    "MASK",
    "PG_SSL_MODES",
    "check_pg_ssl",
    "encode_userinfo",
    "mask_dsn",
    "mask_text",
    "mask_url",
    "scrub",
    "secrets_of",
    "split_url",
]

MASK = "***"

PG_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOSTS = re.compile(
    r"(?:\[[^\]\s/?#@]*\]|[^\[\]:,\s/?#@]*)(?::\d*)?"
    r"(?:,(?:\[[^\]\s/?#@]*\]|[^\[\]:,\s/?#@]*)(?::\d*)?)*"
)
"""What stands between the user info and the path: ``host``, ``host:5432``, ``[::1]:5432``,
``h1:5432,h2:5433`` (libpq's multi-host form)."""
_KEY = r"\b(?:ssl)?(?:password|passwd|pwd)\s*=\s*"
_KV_PASSWORD = re.compile(
    rf"(?P<head>{_KEY})(?P<pw>'(?:[^'\\]|\\.)*(?:'|\\?$)|\"(?:[^\"\\]|\\.)*(?:\"|\\?$)"
    r"|[^\s&]*)", re.I | re.S)
"""``password=value`` in a query string or a libpq keyword DSN (``host=db password='a b'``);
a quoted value runs to its closing quote (``\\'`` escapes one), a bare one to a space or
``&``."""
_URL_QUERY_PASSWORD = re.compile(rf"(?P<head>[?&;]{_KEY[2:]})(?P<pw>[^&]*)", re.I)
"""``password=value`` in the query of a URL: the value runs to the next ``&``."""
_USERINFO_UNSAFE = "@/?#[]"
"""Characters that end (or confuse) a URL's user info when unencoded."""


# -- finding the user info -------------------------------------------------------------


def _authority_end(rest: str) -> int:
    """Where ``urlsplit`` would end the authority (the first ``/``, ``?`` or ``#``)."""
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return min(ends, default=len(rest))


def _in_query_value(rest: str, at: int, after: int) -> bool:
    """Whether ``rest[at]`` stands in the value of a ``key=value`` of the query."""
    q = rest.find("?", after)
    if q < 0 or q > at or 0 <= rest.find("#", q, at):
        return False
    start = max(rest.rfind("&", q, at), q)
    return "=" in rest[start:at]


def _userinfo_end(rest: str, *, query: bool) -> int:
    """Index in ``rest`` (what follows ``scheme://``) of the ``@`` that ends the user info,
    or -1 without user info. ``query``: the URL may have a query (not an MQTT one)."""
    last = rest.rfind("@")
    if last < 0 or not query:
        return last
    end = _authority_end(rest)
    before = rest.rfind("@", 0, end)  # the authority's own last @, if any
    later = [i for i in range(end, len(rest)) if rest[i] == "@"]
    if _HOSTS.fullmatch(rest[before + 1:end]) and all(
            _in_query_value(rest, i, end) for i in later):
        return before
    return last


def _split(url: str, *, query: bool = True) -> tuple[str, str, str | None, str] | None:
    """``(scheme://, user, password or None, what follows the @)``, raw (still encoded);
    ``None`` if ``url`` has no ``scheme://`` or no user info."""
    m = _SCHEME.match(url)
    if m is None:
        return None
    head, rest = url[:m.end()], url[m.end():]
    at = _userinfo_end(rest, query=query)
    if at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    return head, user, password if colon else None, rest[at + 1:]


def split_url(url: str, *, query: bool = True) -> tuple[str, str | None, str | None, str]:
    """``(scheme://, user, password, rest)`` of ``url``, user and password percent-decoded
    (``None`` when absent); ``rest`` is what follows the user info. The password may hold
    any character, unencoded. ``query=False``: the URL never has a query (MQTT), so the
    user info always runs to the last ``@``."""
    parts = _split(url, query=query)
    if parts is None:
        m = _SCHEME.match(url)
        head = url[:m.end()] if m else ""
        return head, None, None, url[len(head):]
    head, user, password, rest = parts
    return (head, urllib.parse.unquote(user),
            None if password is None else urllib.parse.unquote(password), rest)


# -- masking -----------------------------------------------------------------------------


def _mask_kv(text: str) -> str:
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def _mask_one(url: str, *, query: bool = True) -> str:
    parts = _split(url, query=query)
    if parts is None:
        return url if _SCHEME.match(url) is None else _URL_QUERY_PASSWORD.sub(
            lambda m: f"{m['head']}{MASK}", url)
    head, user, password, rest = parts
    rest = _URL_QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", rest)
    return f"{head}{user}{'' if password is None else ':' + MASK}@{rest}"


def mask_dsn(dsn: str | None) -> str | None:
    """``dsn`` (a URL or a libpq keyword DSN) with every password replaced by ``***``: the
    user info's, ``password=`` in the query, ``password=...`` pairs."""
    if dsn is None:
        return None
    if _SCHEME.match(dsn):
        return _mask_one(dsn)
    return _mask_kv(dsn)


def mask_url(url: str) -> str:
    """A URL that never has a query (``mqtt://user:pass@host:1883``) with its password
    masked: the user info always runs to the last ``@``."""
    return _mask_one(url, query=False)


def _mask_urls(line: str) -> str:
    """The passwords of every URL in one line of free text masked."""
    out: list[str] = []
    pos = 0
    starts = [m.start() for m in _SCHEME.finditer(line)]
    for n, start in enumerate(starts):
        if start < pos:
            continue
        limit = starts[n + 1] if n + 1 < len(starts) else len(line)
        quote = line[start - 1] if start and line[start - 1] in "'\"" else ""
        if quote:  # a quoted URL ends at the line's last such quote (more is masked)
            end = line.rfind(quote, start, limit)
            end = limit if end < 0 else end
        else:
            space = re.search(r"\s", line[start:limit])
            end = limit if space is None else start + space.start()
            token = line[start:end]
            rest = token[token.find("://") + 3:]
            if ("@" not in rest and not _HOSTS.fullmatch(rest[:_authority_end(rest)])
                    and "@" in line[end:limit]):
                end = limit  # "user:pass word@host": the password holds a space
        out += [line[pos:start], _mask_one(line[start:end])]
        pos = end
    out.append(line[pos:])
    return "".join(out)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every string in ``secrets`` (of 3 characters or more), the passwords
    of the URLs in it and every ``password=...`` pair replaced by ``***``."""
    text = scrub(text, {s for s in secrets if len(s) >= 3})
    if "://" in text:
        text = "".join(_mask_urls(line) for line in text.splitlines(keepends=True))
    return _mask_kv(text)


def masked_error(exc: BaseException) -> tuple[str, BaseException | None]:
    """For a log line about ``exc`` (a user's consumer, producer or hook raised it): its
    text masked by :func:`mask_text`, and the exception to attach for the traceback, or
    None when masking changed the text of it or of an exception it chains to (a traceback
    would print the secret again; the line says so instead)."""
    text = str(exc)
    masked = mask_text(text)
    seen: set[int] = set()
    link: BaseException | None = exc
    clean = masked == text
    while clean and link is not None and id(link) not in seen:
        seen.add(id(link))
        clean = mask_text(str(link)) == str(link)
        link = link.__cause__ or link.__context__
    if clean:
        return masked, exc
    return f"{masked} (traceback withheld: the error's text held a secret)", None


# -- secrets and scrubbing ---------------------------------------------------------------


def _kv_values(raw: str) -> set[str]:
    """Every spelling of a ``password=`` value: as written, unquoted, percent-decoded."""
    found = {raw, urllib.parse.unquote(raw), urllib.parse.unquote_plus(raw)}
    if len(raw) >= 2 and raw[0] in "'\"":
        inner = raw[1:-1] if raw[-1] == raw[0] else raw[1:]
        found |= {inner, re.sub(r"\\(.)", r"\1", inner)}
    return found


def secrets_of(dsn: str | None, *passwords: object) -> tuple[str, ...]:
    """Every spelling of the DSN's password (and of ``passwords``), longest first: raw and
    percent-decoded, for every ``@`` that could end the user info, and of every
    ``password=`` pair."""
    found: set[str] = {p for p in passwords if isinstance(p, str)}
    if dsn:
        m = _SCHEME.match(dsn)
        if m:
            rest = dsn[m.end():]
            for at in (i for i, c in enumerate(rest) if c == "@"):
                _user, colon, raw = rest[:at].partition(":")
                if colon:
                    found |= {raw, urllib.parse.unquote(raw)}
        pairs = _URL_QUERY_PASSWORD if m else _KV_PASSWORD
        for kv in pairs.finditer(dsn):
            found |= _kv_values(kv["pw"])
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***`` (longest first)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def encode_userinfo(dsn: str) -> str:
    """``dsn`` with its user and password percent-encoded where they hold a character that
    would end the user info early (``@ / ? # [ ]``), so that any URL parser (asyncpg's)
    splits it where :func:`mask_dsn` does. Existing ``%XX`` escapes are kept; a DSN that
    needs nothing is returned as it is."""
    parts = _split(dsn)
    if parts is None:
        return dsn
    head, user, password, rest = parts
    if not any(c in _USERINFO_UNSAFE for c in user + (password or "")):
        return dsn
    safe = "!$&'()*+,;=%~"
    user = urllib.parse.quote(user, safe=safe)
    secret = "" if password is None else ":" + urllib.parse.quote(password, safe=safe)
    return f"{head}{user}{secret}@{rest}"


def check_pg_ssl(ssl: object) -> None:
    """What asyncpg accepts as ``ssl``: None, a bool, an SSLContext or an sslmode name."""
    if ssl is None or isinstance(ssl, bool | SSLContext):
        return
    if isinstance(ssl, str):
        if ssl not in PG_SSL_MODES:
            fail("ssl", ssl, f"must be one of {', '.join(map(repr, PG_SSL_MODES))}, a bool "
                             f"or an ssl.SSLContext, got {ssl!r}")
        return
    fail("ssl", ssl, f"must be a bool, an sslmode str or an ssl.SSLContext, got {ssl!r}")
