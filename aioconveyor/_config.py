"""``conveyor.toml`` to a ready :class:`~aioconveyor.AioConveyor`: TOML, ``${ENV}``
interpolation, validation, and secret masking for everything printed or logged.

The format (the README has a complete example)::

    [conveyor]                    # AioConveyor options (interval = loop_interval, ...)
    interval = 10
    [producer]
    function = "package.module:function"   # every other key is a keyword argument
    # or, instead of [producer], several producers, each on its own schedule:
    # [[producers]]
    # name = "meter"
    # function = "package.module:function"
    # every = 30                  # offset, cron, cron_tz, jitter, timeout, max_ticks, ...
    # consumers = ["db"]          # by name (default: all of them)
    [[consumers]]
    type = "postgres"             # mqtt, csv, pretty, or "package.module:attribute"
    dsn = "${POSTGRES_DSN}"       # the consumer's own options and the Consumer settings
    [leader]                      # optional: only one of several instances produces
    type = "postgres"
    dsn = "${POSTGRES_DSN}"
    key = "home-poller"
    [metrics]                     # optional: the status page, /metrics, /healthz, /readyz
    listen = "127.0.0.1:9108"
    # token = "${OPS_TOKEN}"      # optional: credentials for /, /status.json and /metrics
    # (or user = "ops" and password = "${OPS_PASSWORD}": basic auth)

Every mistake raises :class:`ConfigError` naming the file, the key (``consumers[1].retries``)
and what was expected. Loading builds every object (imports the producer, constructs the
consumers and the conveyor) but opens nothing: no connection, no file, no thread.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib
import inspect
import logging
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._clock import SystemClock
from ._consumer import Consumer, resolve
from ._conveyor import AioConveyor
from ._endpoint import OpsAuth
from ._errors import ConveyorError, SettingError
from ._producer import Producer
from ._schedule import Schedule, schedule_text
from ._secrets import mask_text, secrets_of

__all__ = [
    "BUILTIN_CONSUMERS",
    "BUILTIN_LEADERS",
    "ConfigError",
    "ConfigTables",
    "LoadedConfig",
    "format_listen",
    "load_config",
    "mask_secrets",
    "parse_listen",
]

logger = logging.getLogger(__name__)


# Each loader imports its module when called, so that loading a config with a CSV consumer
# needs neither asyncpg nor aiomqtt (aioconveyor.consumers.mqtt raises ImportError without it).


def _csv_consumer() -> type[Any]:
    from .consumers.csv import CsvConsumer

    return CsvConsumer


def _influx_consumer() -> type[Any]:
    from .consumers.influx import InfluxConsumer

    return InfluxConsumer


def _mqtt_consumer() -> type[Any]:
    from .consumers.mqtt import MqttConsumer

    return MqttConsumer


def _nats_consumer() -> type[Any]:
    from .consumers.nats import NatsConsumer

    return NatsConsumer
def _redis_consumer() -> type[Any]:
    from .consumers.redis import RedisStreamConsumer

    return RedisStreamConsumer


def _postgres_consumer() -> type[Any]:
    from .consumers.postgres import PostgresConsumer

    return PostgresConsumer


def _pretty_consumer() -> type[Any]:
    from .consumers.pretty import PrettyPrintConsumer

    return PrettyPrintConsumer


def _webhook_consumer() -> type[Any]:
    from .consumers.webhook import WebhookConsumer

    return WebhookConsumer


def _postgres_leader() -> type[Any]:
    from ._leader_postgres import PostgresLeader

    return PostgresLeader


def _nats_group() -> type[Any]:
    from ._group_nats import NatsGroup

    return NatsGroup


def _postgres_group() -> type[Any]:
    from ._group_postgres import PostgresGroup

    return PostgresGroup


BUILTIN_CONSUMERS: Mapping[str, Callable[[], type[Any]]] = {
    "csv": _csv_consumer,
    "influx": _influx_consumer,
    "mqtt": _mqtt_consumer,
    "nats": _nats_consumer,
    "postgres": _postgres_consumer,
    "pretty": _pretty_consumer,
    "webhook": _webhook_consumer,
    "redis": _redis_consumer,
}
"""The short ``type`` names of ``[[consumers]]``, each with a function that imports and
returns the class it stands for."""

BUILTIN_LEADERS: Mapping[str, Callable[[], type[Any]]] = {
    "postgres": _postgres_leader,
    "postgres-group": _postgres_group,
    "nats-group": _nats_group,
}
"""The short ``type`` names of ``[leader]``, the same way."""

_SECTIONS = ("conveyor", "producer", "producers", "consumers", "leader", "metrics")
_ARRAYS = ("producers", "consumers")
"""Arrays of tables, kept by name in :class:`ConfigTables` (the rest are ``sections``)."""
_METRICS_KEYS = ("listen", "token", "user", "password")
_LISTEN_EXAMPLE = 'expected "host:port" like "127.0.0.1:9108" (or "[::1]:9108")'
_ALIASES = {"interval": "loop_interval", "offset": "loop_offset"}
_SCHEDULE_KWARGS = ("loop_interval", "loop_offset", "cron", "cron_tz")
_NOT_FROM_TOML = frozenset({"self", "produce", "consumers", "schedule", "clock", "leader",
                            "metrics_auth"})  # credentials: [metrics] token / user, password
_SETTINGS = tuple(f.name for f in dataclasses.fields(Consumer) if f.name != "fn")
_PRODUCER_SETTINGS = tuple(f.name for f in dataclasses.fields(Producer)
                           if f.name not in ("fn", "schedule"))
"""The keys of a ``[[producers]]`` table that are :class:`~aioconveyor.Producer` settings
(``schedule`` needs a Python object); the others, ``function`` aside, go to the function."""
_PER_PRODUCER = {"loop_interval": "every", "loop_offset": "offset", "cron": "cron",
                 "cron_tz": "cron_tz", "eager": "eager", "jitter": "jitter",
                 "max_ticks": "max_ticks", "misfire": "misfire",
                 "misfire_grace": "misfire_grace", "producer_timeout": "timeout",
                 "error_backoff": "error_backoff"}
"""``[conveyor]`` options of the single producer, and their key in ``[[producers]]``."""
_HOOKS = ("on_delivered", "on_error")
_TOGETHER = {"metrics_host": ("metrics_port",)}
"""Options checked together with others (metrics_host means nothing without the port)."""
_NAME_ROOT = re.compile(r"[.\[]")
_INNER_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)
mask_secrets = mask_text
"""``mask_secrets(text, secrets=())``: :func:`aioconveyor._secrets.mask_text` (the one
implementation), under the name the runner has always used."""

_SECRET_NAME = re.compile(r"pass(word|wd|phrase)?|secret|token|api[_-]?key|credential|"
                          r"private[_-]?key", re.I)


class ConfigError(ConveyorError, ValueError):
    """A config file that cannot be used: ``path``, ``key`` (or ``None``) and ``message``."""

    def __init__(self, path: str | os.PathLike[str], key: str | None, message: str) -> None:
        self.path = os.fspath(path)
        self.key = key
        self.message = message
        super().__init__(f"{self.path}: {key}: {message}" if key else f"{self.path}: {message}")


def parse_listen(text: object) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` (or ``"[::1]:9108"``, ``"0.0.0.0:0"``) to ``(host, port)``.

    Raises :class:`~aioconveyor.SettingError` (name ``listen``) saying what was
    expected.
    """
    if not isinstance(text, str):
        _listen_error(text, f"{_LISTEN_EXAMPLE}, got {_type_name(text)} {text!r}")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host or "]" in host:
            _listen_error(text, f"{_LISTEN_EXAMPLE}, got {text!r}")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            _listen_error(text, f"an IPv6 address needs brackets: \"[{host}]:{port}\", "
                                f"got {text!r}")
        if not sep:
            _listen_error(text, f"{_LISTEN_EXAMPLE}, got {text!r} (no port)")
        if not host:
            _listen_error(text, f"missing the host: \"127.0.0.1:{port}\" (this machine only) "
                                f"or \"0.0.0.0:{port}\" (every interface), got {text!r}")
    if any(ch.isspace() for ch in host):
        _listen_error(text, f"{_LISTEN_EXAMPLE}, got {text!r} (a space in the host)")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        _listen_error(text, "the port must be a whole number 0..65535 (0: any free port), "
                            f"got {port!r} in {text!r}")
    return host, int(port)


def _listen_error(text: object, reason: str) -> NoReturn:
    raise SettingError("listen", text, reason, subject="")


def format_listen(host: str, port: int) -> str:
    """``(host, port)`` as written in a URL: ``127.0.0.1:9108``, ``[::1]:9108``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class ConfigTables:
    """The file's tables after ``--set`` and ``${ENV}``: what a reload compares.

    ``sections`` holds ``conveyor``, ``producer``, ``leader`` and ``metrics`` (``None`` when
    a table is absent); ``consumers`` maps each consumer's name to its ``[[consumers]]``
    table, ``producers`` each producer's name to its ``[[producers]]`` table (empty with
    the single ``[producer]`` form).
    """

    sections: Mapping[str, Any] = field(default_factory=dict)
    consumers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    producers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A config file turned into a conveyor that has not been started."""

    path: Path
    conveyor: AioConveyor
    producer: str
    """The producer as written (``package.module:function``), with its keyword names."""
    consumers: tuple[str, ...]
    """One line per consumer: its lane name and what it is (secrets masked)."""
    secrets: frozenset[str]
    """Values that must never be shown (passwords, tokens, secret environment variables)."""
    tables: ConfigTables = field(default_factory=ConfigTables)
    """The tables the objects were built from (for reloads)."""
    specs: Mapping[str, Consumer] = field(default_factory=dict)
    """Each consumer by name, its ``name`` set, ready for ``add_consumer`` and friends."""
    producers: tuple[str, ...] = ()
    """With ``[[producers]]``: one line per producer, its name, schedule, function and the
    consumers it feeds (the routing)."""
    producer_specs: Mapping[str, Producer] = field(default_factory=dict)
    """With ``[[producers]]``: each producer by name, its ``name`` set, ready for
    ``add_producer`` / ``replace_producer``."""

    def mask(self, text: str) -> str:
        """``text`` safe to print or log."""
        return mask_text(text, self.secrets)

    def describe(self) -> list[str]:
        """What the file builds, in a few lines (nothing secret)."""
        conv = self.conveyor
        if self.producer_specs:
            lines = [f"conveyor {conv.name!r}: {len(self.producer_specs)} producers"]
            lines += [f"producer {line}" for line in self.producers]
        else:
            lines = [f"conveyor {conv.name!r}: {describe_schedule(conv)}",
                     f"producer: {self.producer}"]
        lines += [f"consumer {line}" for line in self.consumers]
        if self.producer_specs:
            routes = [p.consumers for p in self.producer_specs.values()]
            unfed = [n for n in conv.consumer_names
                     if all(r is not None and n not in r for r in routes)]
            if unfed:
                lines.append(f"fed by no producer: {', '.join(unfed)}")
        if conv.leader is not None:
            lines.append(f"leader: {conv.leader!r}")
        if conv.metrics_port is not None:
            where = format_listen(conv.metrics_host, conv.metrics_port)
            lines.append(f"metrics: http://{where}/metrics, /healthz and /readyz"
                         + (" (port 0: any free port)" if conv.metrics_port == 0 else ""))
            lines.append(f"status page: http://{where}/"
                         + (" (credentials needed)" if conv.metrics_auth else ""))
        if not self.consumers:
            lines.append("no consumers (the producer runs for its side effects)")
        return [self.mask(line) for line in lines]


def describe_schedule(conv: AioConveyor | Schedule | None) -> str:
    """``every 10 s at +2 s`` or ``cron '*/5 * * * *' (UTC)``; repr for anything else.
    Takes a conveyor (its single producer's schedule) or a schedule."""
    return schedule_text(conv.schedule if isinstance(conv, AioConveyor) else conv)


def load_config(
    path: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Read, interpolate and validate ``path``; build the conveyor without starting it.

    ``overrides`` are ``KEY=VALUE`` strings (``conveyor.interval=0.5``,
    ``consumers[0].path=out.csv``); VALUE is read as a TOML value, else as a string.
    ``env`` defaults to ``os.environ``. The folder of ``path`` is put on ``sys.path`` so the
    file can name modules that live next to it. Raises :class:`ConfigError`.
    """
    return _Loader(Path(path), os.environ if env is None else env).load(overrides)


# -- helpers ---------------------------------------------------------------------------


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have none
        return None


def _keyword_names(sig: inspect.Signature) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in sig.parameters.items() if p.kind in kinds]


def _takes_any_keyword(sig: inspect.Signature) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _type_name(value: object) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean",
            int: "integer", float: "float"}.get(type(value), type(value).__name__)


def _noop(*args: Any) -> None:
    """Stands in for the producer while single options are checked."""


class _Loader:
    """One load of one file: remembers the secrets it meets on the way."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.secrets: set[str] = set()
        self.conveyor_keys: dict[str, str] = {}  # AioConveyor argument -> its TOML key

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, key, mask_text(message, self.secrets))

    def setting_error(self, exc: SettingError, keys: Mapping[str, str],
                      fallback: str) -> ConfigError:
        """The :class:`ConfigError` of ``exc``, at the TOML key of the argument it names
        (``exc.name``; ``sensors[1]`` is found under ``sensors``); an argument that is not
        in ``keys`` is reported at ``fallback`` with the whole message."""
        root = _NAME_ROOT.split(exc.name, maxsplit=1)[0]
        if exc.name in keys:
            return self.error(keys[exc.name], exc.reason)
        if root in keys:
            return self.error(keys[root] + exc.name[len(root):], exc.reason)
        return self.error(fallback, str(exc))

    # -- reading ---------------------------------------------------------------------

    def load(self, overrides: Sequence[str]) -> LoadedConfig:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self.error(None, "no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(None, f"cannot read the file: {exc}") from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise self.error(None, f"not valid TOML: {exc}") from None
        for override in overrides:
            self.override(doc, override)
        doc = self.interpolate(doc, "")
        for key in doc:
            if key not in _SECTIONS:
                raise self.error(key, f"unknown section{_suggest(key, _SECTIONS)}; expected "
                                      "[conveyor], [producer] or [[producers]], [[consumers]], "
                                      "[leader] and [metrics]")
        many = "producers" in doc
        if many and "producer" in doc:
            raise self.error("producers", "the file has both a [producer] table and "
                                          "[[producers]] tables; keep one form: move the "
                                          "[producer] keys into a [[producers]] table of its "
                                          "own (with a name = ...)")
        folder = str(self.path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)

        options = self.conveyor_options(doc.get("conveyor", {}))
        if many:
            self.refuse_single_producer_options(options)
            producer, producer_text = None, ""
        else:
            producer, producer_text = self.producer(doc.get("producer"))
        raw_consumers = self.array("consumers", doc.get("consumers", []))
        consumers: list[Consumer] = []
        lines: list[str] = []
        for i, table in enumerate(raw_consumers):
            consumer, line = self.consumer(f"consumers[{i}]", table)
            consumers.append(consumer)
            lines.append(line)
        names = tuple(s.name for s in resolve(consumers, 1.0))  # the names the conveyor gives
        producers: dict[str, tuple[Producer, str, dict[str, Any]]] = {}
        if many:
            raw_producers = self.array("producers", doc["producers"])
            if not raw_producers:
                raise self.error("producers", "an empty array; give at least one [[producers]] "
                                              "table (or a single [producer] table)")
            for i, table in enumerate(raw_producers):
                spec, line = self.many_producer(f"producers[{i}]", table, names, producers)
                producers[spec.producer_name] = (spec, line, table)
        if "leader" in doc:
            options["leader"] = self.leader(doc["leader"])
        if "metrics" in doc:
            options.update(self.metrics(doc["metrics"], options))
        try:
            conveyor = AioConveyor(producer, consumers, producers=[
                p for p, _, _ in producers.values()], **options)
        except SettingError as exc:
            raise self.setting_error(exc, self.conveyor_keys, "conveyor") from None
        except (TypeError, ValueError) as exc:
            raise self.error("conveyor", str(exc)) from None
        assert conveyor.consumer_names == names
        lines = [f"{n}: {line}" for n, line in zip(names, lines, strict=True)]
        tables = ConfigTables(
            sections={k: copy.deepcopy(doc.get(k)) for k in _SECTIONS if k not in _ARRAYS},
            consumers={n: copy.deepcopy(t) for n, t in zip(names, raw_consumers, strict=True)},
            producers={n: copy.deepcopy(t) for n, (_, _, t) in producers.items()},
        )
        specs = {n: dataclasses.replace(c, name=n) for n, c in zip(names, consumers, strict=True)}
        return LoadedConfig(
            self.path, conveyor, producer_text, tuple(lines), frozenset(self.secrets), tables,
            specs, producers=tuple(line for _, line, _ in producers.values()),
            producer_specs={n: dataclasses.replace(p, name=n)
                            for n, (p, _, _) in producers.items()})

    def array(self, key: str, raw: Any) -> list[dict[str, Any]]:
        """``[[key]]``: an array of tables."""
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise self.error(key, f"expected [[{key}]] tables (an array of tables, double "
                                  f"brackets), got {_type_name(raw)}")
        return raw

    def refuse_single_producer_options(self, options: Mapping[str, Any]) -> None:
        """With ``[[producers]]``, ``[conveyor]`` cannot hold a producer's settings."""
        for kwarg, key in _PER_PRODUCER.items():
            if kwarg in options:
                written = self.conveyor_keys[kwarg]
                raise self.error(written, f"a setting of the single [producer]; with "
                                          f"[[producers]] each producer has its own: write "
                                          f"{key} = ... in its [[producers]] table")

    def override(self, doc: dict[str, Any], text: str) -> None:
        """Apply one ``--set KEY=VALUE``."""
        key, sep, raw = text.partition("=")
        key = key.strip()
        where = f"--set {key or text}"
        if not sep or not key:
            raise self.error("--set", f"expected KEY=VALUE (like conveyor.interval=5), got "
                                      f"{text!r}")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word: take it as a string
        parts = [p for p in re.split(r"[.\[\]]", key) if p]
        node: Any = doc
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise self.error(where, f"{'.'.join(parts[:i]) or 'the array'} has "
                                            f"{len(node)} entries; {part!r} is not an index")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise self.error(where, f"{'.'.join(parts[:i])} is not a table")

    def interpolate(self, value: Any, key: str) -> Any:
        """Replace ``${NAME}`` / ``${NAME:-default}`` in every string; ``$$`` is ``$``."""
        if isinstance(value, dict):
            out = {k: self.interpolate(v, f"{key}.{k}" if key else k) for k, v in value.items()}
            for k, v in out.items():
                if isinstance(v, str) and v and _SECRET_NAME.search(k):
                    self.secrets.add(v)
            return out
        if isinstance(value, list):
            return [self.interpolate(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        text = self.substitute(value, key)
        self.secrets.update(secrets_of(text))  # URL user info and password= pairs
        return text

    def substitute(self, text: str, key: str) -> str:
        if "$" not in text:
            return text
        out: list[str] = []
        i = 0
        while (j := text.find("$", i)) >= 0:
            out.append(text[i:j])
            following = text[j + 1:j + 2]
            if following == "$":
                out.append("$")
                i = j + 2
                continue
            if following != "{":
                out.append("$")
                i = j + 1
                continue
            end = text.find("}", j + 2)
            if end < 0:
                raise self.error(key, "a ${ without its closing }: write ${NAME}, "
                                      "${NAME:-default}, or $$ for a literal $")
            inner = text[j + 2:end]
            m = _INNER_REF.fullmatch(inner)
            if m is None:
                raise self.error(key, f"${{{inner}}} is not an environment reference: write "
                                      "${NAME}, ${NAME:-default}, or $$ for a literal $")
            name, default = m[1], m[2]
            found = self.env.get(name)
            if found is None or (found == "" and default is not None):
                if default is None:
                    raise self.error(key, f"environment variable {name} is not set (the value "
                                          f"uses ${{{name}}}); set it, or give a default: "
                                          f"${{{name}:-...}}")
                found = default
            elif _SECRET_NAME.search(name):
                self.secrets.add(found)
            out.append(found)
            i = end + 1
        out.append(text[i:])
        return "".join(out)

    # -- sections --------------------------------------------------------------------

    def table(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table ([{key}]), got {_type_name(value)}")
        return value

    def target(self, key: str, kind: str,
               builtins: Mapping[str, Callable[[], type[Any]]]) -> Any:
        """A built-in short name's class, else what ``"package.module:attribute"`` names."""
        load = builtins.get(kind)
        if load is None:
            return self.import_target(key, kind)
        try:
            return load()
        except ImportError as exc:  # its optional dependency is not installed
            raise self.error(key, str(exc)) from None

    def import_target(self, key: str, spec: Any) -> Any:
        """``"package.module:attribute"`` to the object it names."""
        expected = 'expected "package.module:attribute"'
        if not isinstance(spec, str):
            raise self.error(key, f"{expected}, got {_type_name(spec)} {spec!r}")
        module_name, colon, attr = spec.partition(":")
        dotted = [*module_name.split("."), *attr.split(".")]
        if not colon or not all(p.isidentifier() for p in dotted):
            raise self.error(key, f"{expected} (a colon between module and name), got {spec!r}")
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
                raise self.error(key, f"no module named {exc.name!r} (looked in "
                                      f"{self.path.resolve().parent} and on sys.path)") from None
            raise self.error(key, f"importing {module_name!r} failed: {exc}") from None
        except Exception as exc:  # the user's module raised while importing
            raise self.error(key, f"importing {module_name!r} failed: "
                                  f"{type(exc).__name__}: {exc}") from None
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                names = [n for n in dir(obj) if not n.startswith("_")]
                raise self.error(key, f"{module_name!r} has no attribute {part!r}"
                                      f"{_suggest(part, names)}") from None
        return obj

    def construct(self, key: str, cls: Any, options: dict[str, Any], what: str) -> Any:
        """``cls(**options)`` with unknown, missing and bad options named by key."""
        sig = _signature(cls)
        if sig is not None:
            names = _keyword_names(sig)
            if not _takes_any_keyword(sig):
                for k in options:
                    if k not in names:
                        raise self.error(f"{key}.{k}", f"unknown option for {what}"
                                         f"{_suggest(k, names)}; it takes: {', '.join(names)}")
            for n in names:
                p = sig.parameters[n]
                if p.default is inspect.Parameter.empty and n not in options:
                    raise self.error(key, f"missing required option {n!r} for {what}")
        try:
            return cls(**options)
        except SettingError as exc:
            raise self.setting_error(exc, {k: f"{key}.{k}" for k in options}, key) from None
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc)) from None
        except Exception as exc:  # a constructor of the user's that fails in its own way
            raise self.error(key, f"{what}(...) raised {type(exc).__name__}: {exc}") from None

    def callable_with(self, key: str, target: Any, options: dict[str, Any], nargs: int,
                      what: str) -> Any:
        """``target`` ready to be called with ``nargs`` positional arguments: a class is
        instantiated with ``options``, a function gets them bound (``functools.partial``)."""
        label = getattr(target, "__qualname__", None) or repr(target)
        if inspect.isclass(target):
            obj = self.construct(key, target, options, label)
        elif not callable(target):
            raise self.error(key, f"{label} is not callable (expected a function or a class)")
        elif options and not (inspect.isroutine(target) or isinstance(target, functools.partial)):
            raise self.error(key, f"{label} is an object, not a class or a function: it takes "
                                  f"no options, got {', '.join(sorted(options))}")
        else:
            sig = _signature(target)
            if options and sig is not None and not _takes_any_keyword(sig):
                names = _keyword_names(sig)
                for k in options:
                    if k not in names:
                        raise self.error(f"{key}.{k}", f"unknown option: {label}() has no "
                                         f"argument {k!r}{_suggest(k, names)}")
            obj = functools.partial(target, **options) if options else target
        if not callable(obj):
            raise self.error(key, f"{label}(...) made a {type(obj).__name__}, which is not "
                                  f"callable as {what}")
        sig = _signature(obj)
        if sig is not None:
            try:
                sig.bind(*range(nargs))
            except TypeError as exc:
                args = "data, event_time" if nargs == 2 else "event_time"
                raise self.error(key, f"{label} cannot be called as {what} ({args}): {exc}; "
                                      f"its signature is {sig}") from None
        return obj

    def producer(self, raw: Any) -> tuple[Any, str]:
        if raw is None:
            raise self.error("producer", 'missing [producer] table with function = '
                                         '"package.module:function" (or [[producers]] '
                                         'tables, one per producer)')
        table = self.table("producer", raw)
        if "function" not in table:
            raise self.error("producer.function", 'missing; expected "package.module:function"')
        options = {k: v for k, v in table.items() if k != "function"}
        target = self.import_target("producer.function", table["function"])
        fn = self.callable_with("producer", target, options, 1, "a producer")
        text = str(table["function"])
        if options:
            text += f" ({', '.join(sorted(options))})"
        return fn, text

    def many_producer(self, key: str, table: dict[str, Any], consumers: Sequence[str],
                      taken: Mapping[str, tuple[Producer, str, dict[str, Any]]],
                      ) -> tuple[Producer, str]:
        """One ``[[producers]]`` table: its :class:`~aioconveyor.Producer` settings, the
        function with the other keys bound, and the routes checked against ``consumers``."""
        if "function" not in table:
            raise self.error(f"{key}.function", 'missing; expected "package.module:function"')
        target = self.import_target(f"{key}.function", table["function"])
        options = {k: v for k, v in table.items() if k != "function"}
        settings = {k: options.pop(k) for k in list(options) if k in _PRODUCER_SETTINGS}
        if "schedule" in options:
            raise self.error(f"{key}.schedule", "a Schedule is a Python object; in a file use "
                                                "every = (with offset =) or cron = (with "
                                                "cron_tz =)")
        sig = _signature(target)
        accepted = set(_keyword_names(sig)) if sig is not None else set()
        for k in settings:
            if k in accepted:  # e.g. a function with a name or timeout argument of its own
                options[k] = settings[k]
        fn = self.callable_with(key, target, options, 1, "a producer")
        if "cron_tz" in settings:
            settings["cron_tz"] = self.zone(f"{key}.cron_tz", settings["cron_tz"])
        route = settings.get("consumers")
        if isinstance(route, list):
            for j, name in enumerate(route):
                if isinstance(name, str) and name not in consumers:
                    have = ", ".join(consumers) or "none"
                    raise self.error(f"{key}.consumers[{j}]", f"no consumer named {name!r}"
                                     f"{_suggest(name, consumers)}; the file's consumers: "
                                     f"{have} (a consumer's name is its name =, else the one "
                                     "aioconveyor check lists)")
        keys = {k: f"{key}.{k}" for k in settings}
        keys["produce"] = f"{key}.function"
        try:
            spec = Producer(fn, **settings)
            spec.settle(SystemClock(), None)  # the checks that need the period (jitter)
        except SettingError as exc:
            raise self.setting_error(exc, keys, key) from None
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc)) from None
        name = spec.producer_name
        if name in taken:
            index = list(taken).index(name)
            how = "its name =" if "name" in settings else "its function's name"
            raise self.error(f"{key}.name", f"producer name {name!r} ({how}) is taken by "
                                            f"producers[{index}]; give each [[producers]] "
                                            "table a name = of its own")
        text = str(table["function"])
        if options:
            text += f" ({', '.join(sorted(options))})"
        feeds = "all consumers" if spec.consumers is None else (
            ", ".join(spec.consumers) or "no consumer")
        schedule = describe_schedule(spec.resolved_schedule())
        return spec, f"{name}: {schedule}: {text} -> {feeds}"

    def consumer(self, key: str, table: dict[str, Any]) -> tuple[Consumer, str]:
        kind = table.get("type")
        choices = f"{', '.join(repr(k) for k in BUILTIN_CONSUMERS)} or \"package.module:attribute\""
        if kind is None:
            raise self.error(f"{key}.type", f"missing; expected {choices}")
        if not isinstance(kind, str) or (":" not in kind and kind not in BUILTIN_CONSUMERS):
            hint = _suggest(kind, BUILTIN_CONSUMERS) if isinstance(kind, str) else ""
            raise self.error(f"{key}.type", f"unknown consumer type {kind!r}{hint}; expected "
                                            f"{choices}")
        target = self.target(f"{key}.type", kind, BUILTIN_CONSUMERS)
        options = {k: v for k, v in table.items() if k != "type"}
        settings = {k: options.pop(k) for k in list(options) if k in _SETTINGS}
        sig = _signature(target)
        accepted = set(_keyword_names(sig)) if sig is not None else set()
        for k in settings:
            if k in accepted:  # e.g. name, or PostgresConsumer's retries / batch_size
                options[k] = settings[k]
        found = options.get("discovery")
        entity_lists = {"sensors", "binary_sensors"}
        if isinstance(found, dict) and found and not entity_lists & set(found) and all(
                isinstance(v, dict) for v in found.values()):  # a device per producer
            options["discovery"] = {p: self.discovery(f"{key}.discovery.{p}", t)
                                    for p, t in found.items()}
        elif isinstance(found, dict):
            options["discovery"] = self.discovery(f"{key}.discovery", found)
        fn = self.callable_with(key, target, options, 2, "a consumer")
        for hook in _HOOKS:
            if hook in settings:
                settings[hook] = self.callable_with(
                    f"{key}.{hook}", self.import_target(f"{key}.{hook}", settings[hook]), {},
                    3 if hook == "on_error" else 2, f"the {hook} hook")
        if isinstance(settings.get("spool"), str):
            settings["spool"] = str(self.path.resolve().parent / settings["spool"])
        keys = {k: f"{key}.{k}" for k in settings}
        try:
            consumer = Consumer(fn, **settings)
            AioConveyor(_noop, [consumer], loop_interval=1.0)  # resolves its settings
        except SettingError as exc:
            raise self.setting_error(exc, keys, key) from None
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc)) from None
        shown = repr(fn) if inspect.isclass(target) else str(kind)
        if isinstance(fn, functools.partial):
            shown = f"{kind} ({', '.join(sorted(fn.keywords))})"
        return consumer, shown

    def leader(self, raw: Any) -> Any:
        """``[leader]``: ``type = "postgres"`` (or ``"package.module:attribute"``) + options."""
        table = dict(self.table("leader", raw))
        kind = table.pop("type", None)
        choices = '"postgres" or "package.module:attribute"'
        if not isinstance(kind, str) or (":" not in kind and kind not in BUILTIN_LEADERS):
            found = "missing" if kind is None else f"unknown leader type {kind!r}"
            raise self.error("leader.type", f"{found}; expected {choices}")
        target = self.target("leader.type", kind, BUILTIN_LEADERS)
        if inspect.isclass(target):
            leader = self.construct("leader", target, table, target.__qualname__)
        elif table:
            raise self.error("leader", f"{kind} is an object, not a class: it takes no options")
        else:
            leader = target
        try:
            AioConveyor(_noop, (), leader=leader)
        except (TypeError, ValueError) as exc:
            raise self.error("leader.type", str(exc)) from None
        return leader

    def metrics(self, raw: Any, options: Mapping[str, Any]) -> dict[str, Any]:
        """``[metrics] listen = "host:port"`` to ``metrics_host`` / ``metrics_port``."""
        table = self.table("metrics", raw)
        for k in table:
            if k not in _METRICS_KEYS:
                raise self.error(f"metrics.{k}", f"unknown option{_suggest(k, _METRICS_KEYS)}; "
                                                 f"expected: {', '.join(_METRICS_KEYS)}")
        if "listen" not in table:
            raise self.error("metrics.listen", f"missing; {_LISTEN_EXAMPLE}")
        for kwarg in ("metrics_host", "metrics_port", "metrics_auth"):
            if kwarg in options:
                raise self.error("metrics.listen", f"also given as conveyor.{kwarg}; keep one "
                                                   "of them (preferably [metrics] listen)")
        try:
            host, port = parse_listen(table["listen"])
        except (TypeError, ValueError) as exc:
            raise self.error("metrics.listen", str(exc)) from None
        result: dict[str, Any] = {"metrics_host": host, "metrics_port": port}
        self.check_options(result, {k: "metrics.listen" for k in result}, "metrics.listen")
        auth, key = self.metrics_auth(table)
        if auth is not None:
            result["metrics_auth"] = auth
            self.check_options(result, {**{k: "metrics.listen" for k in result},
                                        "metrics_auth": key}, key)
        return result

    def metrics_auth(self, table: Mapping[str, Any]) -> tuple[Any, str]:
        """``token``, or ``user`` and ``password``, to ``metrics_auth`` (and the key that
        errors are reported at)."""
        token, user, password = (table.get(k) for k in ("token", "user", "password"))
        if token is not None:
            if user is not None or password is not None:
                raise self.error("metrics.token", "a token or a user and a password, not both")
            return token, "metrics.token"
        if user is None and password is None:
            return None, "metrics"
        if user is None or password is None:
            raise self.error(f"metrics.{'user' if user is None else 'password'}",
                             "missing: basic auth needs a user and a password")
        try:
            OpsAuth(user=user, password=password)
        except SettingError as exc:
            part = "password" if exc.reason.startswith("the password") else "user"
            raise self.error(f"metrics.{part}", exc.reason) from None
        return (user, password), "metrics.user"

    def discovery(self, key: str, table: dict[str, Any]) -> Any:
        """``[consumers.discovery]`` to an :class:`~aioconveyor.consumers.mqtt.HaDiscovery`
        (``sensors`` and ``binary_sensors``: arrays of tables)."""
        from .consumers.mqtt import HaBinarySensor, HaDiscovery, HaSensor

        options = dict(table)
        if "sensors" not in options and "binary_sensors" not in options:
            raise self.error(f"{key}.sensors", "missing; expected an array of tables (sensors "
                                               "= [{ key = \"power_w\", name = \"Power\" }, "
                                               "...]) and/or binary_sensors = [...]")
        for field_name, cls in (("sensors", HaSensor), ("binary_sensors", HaBinarySensor)):
            if field_name not in options:
                continue
            entities = options[field_name]
            if not isinstance(entities, list) or not all(isinstance(s, dict) for s in entities):
                raise self.error(f"{key}.{field_name}", "expected an array of tables ("
                                 f"{field_name} = [{{ key = \"power_w\", name = \"Power\" }},"
                                 f" ...]), got {_type_name(entities)}")
            built = []
            for i, entity in enumerate(entities):
                where = f"{key}.{field_name}[{i}]"
                names = _keyword_names(inspect.signature(cls))
                for k in entity:
                    hint = cls.suggest(k) if k not in names else None
                    if hint is not None:
                        raise self.error(f"{where}.{k}", f"unknown option for {cls.__name__}: "
                                                          f"{hint}")
                built.append(self.construct(where, cls, entity, cls.__name__))
            options[field_name] = built
        return self.construct(key, HaDiscovery, options, "HaDiscovery")

    def conveyor_options(self, raw: Any) -> dict[str, Any]:
        table = self.table("conveyor", raw)
        sig = inspect.signature(AioConveyor.__init__)
        kwargs = [n for n in sig.parameters if n not in _NOT_FROM_TOML]
        known = [*_ALIASES, *kwargs]
        options: dict[str, Any] = {}
        written: dict[str, str] = {}  # kwarg -> the key the file used
        for k, v in table.items():
            if k not in known:
                raise self.error(f"conveyor.{k}", f"unknown option{_suggest(k, known)}; "
                                                  f"expected one of: {', '.join(known)}")
            kwarg = _ALIASES.get(k, k)
            if kwarg in written:
                raise self.error(f"conveyor.{k}", f"given twice, as {written[kwarg]!r} and {k!r}")
            written[kwarg] = k
            options[kwarg] = v
        if "cron_tz" in options:
            options["cron_tz"] = self.zone("conveyor.cron_tz", options["cron_tz"])
        keys = {kw: f"conveyor.{k}" for kw, k in written.items()}
        self.conveyor_keys = keys
        schedule = {k: v for k, v in options.items() if k in _SCHEDULE_KWARGS}
        self.check_options(schedule, keys, "conveyor")
        for k, v in options.items():
            if k not in _SCHEDULE_KWARGS:
                partners = {p: options[p] for p in _TOGETHER.get(k, ()) if p in options}
                self.check_options({**schedule, **partners, k: v}, keys, keys[k])
        return options

    def zone(self, key: str, tz: Any) -> ZoneInfo:
        """An IANA time zone name to its :class:`~zoneinfo.ZoneInfo`."""
        if not isinstance(tz, str):
            raise self.error(key, f'expected a time zone name like "Europe/Berlin", got {tz!r}')
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.error(key, f"unknown time zone {tz!r}") from None

    def check_options(self, options: dict[str, Any], keys: dict[str, str], key: str) -> None:
        try:
            AioConveyor(_noop, (), **options)
        except SettingError as exc:
            raise self.setting_error(exc, {k: keys[k] for k in options}, key) from None
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc)) from None
        except ImportError as exc:  # metrics_port without prometheus-client
            raise self.error(keys.get("metrics_port", key), str(exc)) from None

