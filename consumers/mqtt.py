"""Publish every record to an MQTT broker (aiomqtt), optionally announced to Home Assistant.

One record becomes one message: JSON by default (a mapping gains an ``event_time`` key),
``bytes`` / ``str`` data passes through untouched, or an ``encoder`` of your own decides.
The topic may be a template filled from the record (``home/{device}/state``) and from its
producer's name (``home/{producer}/state``); each value fills exactly one topic level, so a
record whose value holds ``/``, ``+``, ``#`` or NUL is rejected rather than published to a
topic nobody subscribed to.

Several producers, one connection: with ``{producer}`` in the topic and ``discovery`` a
mapping of producer names to :class:`HaDiscovery`, every producer is its own Home Assistant
device with its own availability topic, and every entity's ``availability`` lists both the
bridge's topic (this consumer's connection, with its Last Will) and its device's.

Delivery: with QoS 1 (the default) a call returns only once the broker has acknowledged
every message (PUBACK). When the broker is unreachable or the connection drops, the call
raises and the lane retries the same item (with capped backoff, practically forever) while
new items wait in its bounded queue; the next call connects again. So nothing is lost while
the queue has room, and a message whose acknowledgement was lost is sent again: delivery
is *at least once*.

A record that can never be published (a topic field it lacks or fills with ``/``, an
encoder that fails) is
reported through the lane as :class:`~aioconveyor.Rejected` (``errors`` / ``last_error``,
counted as ``rejected``, never retried) and counted in :attr:`MqttConsumer.rejected`; the
other records of its batch are published first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import secrets
import socket
import ssl
import string
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from aioconveyor.kit import ConveyorError, LogLimiter, Rejected, check, mask_url, split_url

from ._ha import OFFLINE, ONLINE, HaBinarySensor, HaDiscovery, HaSensor
from ._records import as_mapping, iter_produced, json_dumps

try:
    import aiomqtt
    from aiomqtt.exceptions import MqttConnectError
except ImportError as exc:  # exercised in a subprocess by the tests
    raise ImportError(
        'MqttConsumer needs the aiomqtt package; install it with: pip install "aioconveyor[mqtt]"'
    ) from exc

__all__ = [
    "HaBinarySensor",
    "HaDiscovery",
    "HaSensor",
    "MqttConnectionError",
    "MqttConsumer",
    "MqttConsumerError",
    "MqttRecordError",
]

logger = logging.getLogger(__name__)

# ONLINE: the retained payload of an availability topic while connected; OFFLINE: after a
# clean close, and the Last Will (both from ._ha, where the discovery configs name them)

_MAX_TOPIC_BYTES = 65535
_MAX_PAYLOAD_BYTES = 268_435_455
_PASSTHROUGH = (bytes, bytearray, memoryview, str)
_FORMATTER = string.Formatter()


# -- errors ----------------------------------------------------------------------------


class MqttConsumerError(ConveyorError):
    """Root of the errors :class:`MqttConsumer` raises (the lane counts and logs them)."""


class MqttRecordError(MqttConsumerError, Rejected, ValueError):
    """A record that can never be published: a topic field it lacks, an encoder that failed.

    A :class:`~aioconveyor.Rejected`: the lane counts it and does not retry it.
    """


class MqttConnectionError(MqttConsumerError, ConnectionError):
    """The broker could not be reached, refused us, or the connection dropped mid-publish.

    ``refused`` is true when the broker answered the CONNECT with an error (bad credentials,
    not authorised, bad client id) or its TLS certificate failed verification: retrying will
    not help until the configuration changes.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


# -- helpers ---------------------------------------------------------------------------


def _check_text(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    check.text(name, value, subject=f"{owner} {name}")


# -- topics and URLs -------------------------------------------------------------------

PRODUCER_FIELD = "producer"
"""The topic template field the record's producer fills (``home/{producer}/state``)."""


def _one_level(what: str, value: str, topic: str) -> str:
    """``value`` if it can fill one level of ``topic``, else :class:`MqttRecordError`."""
    bad = [c for c in ("/", "+", "#", "\0") if c in value]
    if not value or bad:
        raise MqttRecordError(
            f"topic {topic!r}: {what} is {value!r}, which "
            + (f"holds {bad[0]!r}" if bad else "is empty")
            + "; a value fills exactly one topic level (no '/', '+', '#' or NUL)")
    return value


def _fill_producer(topic: str, producer: str) -> str:
    """A template whose only field is ``{producer}``, filled."""
    return _FORMATTER.vformat(topic, (), {PRODUCER_FIELD: producer})


def _matches(template: str, topic: str) -> bool:
    """Whether some producer name would fill ``template`` (``{producer}`` only) as ``topic``."""
    pattern = "".join(re.escape(literal) + ("" if field is None else "[^/]+")
                      for literal, field, _spec, _conversion in _FORMATTER.parse(template))
    return re.fullmatch(pattern, topic) is not None


def _fixed_prefix(topic: str) -> str:
    """The levels of ``topic`` before the first one holding a template field."""
    levels: list[str] = []
    for level in topic.split("/"):
        if "{" in level:
            break
        levels.append(level)
    return "/".join(levels)


def _check_topic(what: str, topic: str, *, subject: str | None = None) -> None:
    """Reject what no broker accepts as a topic to publish to."""
    if not topic:
        check.fail(what, topic, "must not be empty", subject=subject)
    if "+" in topic or "#" in topic:
        check.fail(what, topic, f"must not contain the wildcards '+' or '#', got {topic!r}",
                   subject=subject)
    if "\0" in topic:
        check.fail(what, topic, f"must not contain NUL characters, got {topic!r}",
                   subject=subject)
    if len(topic.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES:
        check.fail(what, topic, f"is longer than {_MAX_TOPIC_BYTES} bytes", subject=subject)


def _template_fields(topic: str, what: str = "topic") -> frozenset[str]:
    """The top-level field names a topic template uses (``{device}``, ``{event_time:%Y}``)."""
    try:
        parsed = list(_FORMATTER.parse(topic))
    except ValueError as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        check.fail(what, topic, f"is not a valid template ({problem}): {topic!r}")
    names: set[str] = set()
    for _literal, field, spec, _conversion in parsed:
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not root or root.isdigit():
            check.fail(what, topic, "template fields must be named, like {device}, "
                                    f"got {topic!r}")
        if spec and "{" in spec:
            check.fail(what, topic, "template format specs cannot hold fields, "
                                    f"got {topic!r}")
        names.add(root)
    # the fixed parts must be valid too (a field stands for at least one character)
    _check_topic(what, "x".join(literal for literal, *_ in parsed) or "x")
    return frozenset(names)


class _Address(NamedTuple):
    tls: bool
    host: str | None
    port: int | None
    username: str | None
    password: str | None


def _parse_url(url: str) -> _Address:
    """Split ``mqtt[s]://user:pass@host:port``; the password may contain any character."""
    masked = mask_url(url)
    head, username, password, hostpart = split_url(url, query=False)
    scheme = head.removesuffix("://").lower()
    if scheme not in ("mqtt", "mqtts"):
        check.fail("url", masked,
                   f"must look like mqtt://host:port or mqtts://host, got {masked!r}")
    parts = urllib.parse.urlsplit(f"//{hostpart}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        check.fail("url", masked, f"must not have a path, query or fragment, got {masked!r}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port == -1:
        check.fail("url", masked, f"has an invalid port: {masked!r}")
    return _Address(scheme == "mqtts", parts.hostname or None, port, username or None, password)


# -- the consumer ----------------------------------------------------------------------


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class _Message(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True, eq=False)
class _Connection:
    """One connected aiomqtt client and the task that notices when the connection drops."""

    client: aiomqtt.Client
    watcher: asyncio.Task[None]
    finished: bool = False
    """Closed by us, or its loss already logged."""
    unacked_since: float | None = None
    """When a publish was abandoned (the lane's timeout) before its PUBACK came, if since."""

    @property
    def alive(self) -> bool:
        return not self.watcher.done()


async def _watch(client: aiomqtt.Client) -> None:
    """Ends (raising ``MqttError``) as soon as aiomqtt sees the connection drop."""
    async for _message in client.messages:  # we subscribe to nothing: this only waits
        pass


def _abort(client: aiomqtt.Client) -> None:
    """Drop a connection without waiting: queue a DISCONNECT; paho closes the socket as soon
    as it is written (or at once if the connection is already gone). aiomqtt has no public
    "abort", hence its paho client."""
    with contextlib.suppress(Exception):
        client._client.disconnect()


def _close_sockets_left_in(exc: BaseException) -> None:
    """Close the sockets a failed connect leaves in its traceback's frames.

    paho-mqtt does not close its socket when the TLS handshake (or the connect) fails; the
    socket then lives on in the error's traceback until a garbage collection finds it and
    warns. With start-up retries that would be one leaked socket per attempt, so close
    them here, where the failure is handled.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            for value in tuple(tb.tb_frame.f_locals.values()):
                if isinstance(value, socket.socket) and value.fileno() != -1:
                    with contextlib.suppress(OSError):
                        value.close()
            tb = tb.tb_next
        error = error.__cause__ or error.__context__


class MqttConsumer:
    """Publish every record to an MQTT broker; see the module docstring for the guarantees.

    * ``url``: ``mqtt://user:pass@host:1883`` or ``mqtts://...`` (TLS, port 8883 by
      default); ``host``, ``port``, ``username``, ``password`` and ``tls`` override its parts.
      ``tls`` is an :class:`ssl.SSLContext`, ``True`` (system CAs) or ``False``.
    * ``topic``: a fixed topic or a template filled from the record's fields and
      ``event_time`` (``"home/{device}/state"``, ``"log/{event_time:%Y-%m-%d}"``).
    * ``qos`` (1: wait for the broker's PUBACK) and ``retain`` apply to every record.
    * ``encoder(data, event_time) -> bytes | str`` replaces the default payload: JSON (with
      ``event_time_key``, default ``"event_time"``, added to mappings unless present; None
      to leave it out), or the data itself when it is ``bytes`` / ``str``.
    * ``availability_topic``: retained ``"online"`` on every connect, ``"offline"`` on a clean
      close and as the Last Will. With ``discovery`` it defaults to the topic's parent +
      ``/availability`` (per producer: the topic's fixed levels + ``/availability``).
    * ``discovery``: a :class:`HaDiscovery` announcing Home Assistant sensors on connect, as
      one device; or a mapping ``{producer name: HaDiscovery}``, one device per producer
      (the topic then holds ``{producer}`` and no other field).
    * ``device_availability_topic``: a template with ``{producer}``: retained
      ``"offline"`` on connect for each device of ``discovery`` until its producer's first
      record, ``"online"`` from then on (also after a reconnect), ``"offline"`` on a clean
      close. With a ``discovery`` mapping it defaults to the topic's parent (or the topic)
      + ``/availability``.
    * ``keepalive`` (s): how fast a silent broker is noticed (about 1.5x). ``timeout`` (s):
      the longest wait for a connect or a PUBACK before the connection is given up.
    * ``client_id``: stable for the consumer's life (generated when ``None``), so a
      reconnect takes over the old session instead of leaving it to fire its Last Will.
    * ``retries`` / ``max_backoff``: the lane defaults (retry practically forever, at most
      ``max_backoff`` s apart). ``client_options``: extra ``aiomqtt.Client`` arguments.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        topic: str = "aioconveyor/state",
        qos: int = 1,
        retain: bool = False,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | bool | None = None,
        client_id: str | None = None,
        keepalive: int = 30,
        timeout: float = 10.0,
        encoder: Callable[[Any, datetime], bytes | str] | None = None,
        event_time_key: str | None = "event_time",
        availability_topic: str | None = None,
        discovery: HaDiscovery | Mapping[str, HaDiscovery] | None = None,
        device_availability_topic: str | None = None,
        name: str | None = None,
        retries: int = 1_000_000,
        max_backoff: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        address = _Address(False, None, None, None, None)
        if url is not None:
            if not isinstance(url, str):
                check.fail("url", type(url).__name__,  # by type: it may hold a password
                           f"must be a str, got {type(url).__name__}")
            address = _parse_url(url)
        self.host = host if host is not None else (address.host or "localhost")
        _check_text("MqttConsumer", "host", self.host)
        if tls is None:
            tls = address.tls
        if not isinstance(tls, ssl.SSLContext | bool):
            check.fail("tls", tls, f"must be an ssl.SSLContext or a bool, got {tls!r}")
        self._tls: ssl.SSLContext | None = (
            tls if isinstance(tls, ssl.SSLContext) else ssl.create_default_context() if tls
            else None
        )
        if port is None:
            port = address.port or (8883 if self._tls is not None else 1883)
        self.port = check.integer("port", port, minimum=1, maximum=65535)
        self.username = username if username is not None else address.username
        _check_text("MqttConsumer", "username", self.username, optional=True)
        self._password = password if password is not None else address.password
        if self._password is not None and not isinstance(self._password, str):
            check.fail("password", type(self._password).__name__,
                       f"must be a str, got {type(self._password).__name__}")
        if self._password is not None and self.username is None:
            check.fail("password", "***", "needs a username (MQTT sends none without one)",
                       subject="a password")

        if not isinstance(topic, str):
            check.fail("topic", topic, f"must be a str, got {topic!r}")
        self.topic = topic
        self._topic_fields = _template_fields(topic)
        if not self._topic_fields:
            _check_topic("topic", topic)
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            check.fail("qos", qos, f"must be 0, 1 or 2, got {qos!r}")
        self.qos = qos
        self.retain = check.boolean("retain", retain)
        self.keepalive = check.integer("keepalive", keepalive, minimum=1, maximum=65535,
                                       unit="seconds")
        self.timeout = check.positive("timeout", timeout)
        if encoder is not None:
            check.callable_("encoder", encoder)
            if event_time_key != "event_time":
                check.conflict("event_time_key", event_time_key, "encoder",
                               "event_time_key shapes the default JSON payload only")
        self.encoder = encoder
        _check_text("MqttConsumer", "event_time_key", event_time_key, optional=True)
        self.event_time_key = event_time_key

        self.devices: dict[str, HaDiscovery] = {}
        """The Home Assistant device of each producer (a ``discovery`` mapping)."""
        if isinstance(discovery, Mapping):
            self.devices = self._check_devices(discovery, topic)
            if availability_topic is None:
                availability_topic = f"{_fixed_prefix(topic) or 'aioconveyor'}/availability"
            if device_availability_topic is None:
                parent = topic.rsplit("/", 1)[0] if "/" in topic else ""
                device_availability_topic = (
                    f"{parent if PRODUCER_FIELD in _template_fields(parent) else topic}"
                    "/availability")
        elif discovery is not None:
            if not isinstance(discovery, HaDiscovery):
                check.fail("discovery", discovery, "must be a HaDiscovery, a mapping of "
                           f"producer names to HaDiscovery, or None, got {discovery!r}")
            if self._topic_fields:
                check.conflict("topic", topic, "discovery",
                               "discovery needs a fixed state topic, not a template; for a "
                               "device per producer pass discovery={producer: HaDiscovery}")
            if availability_topic is None:
                parent = topic.rsplit("/", 1)[0] if "/" in topic else topic
                availability_topic = f"{parent}/availability"
        if availability_topic is not None:
            _check_text("MqttConsumer", "availability_topic", availability_topic)
            _check_topic("availability_topic", availability_topic)
        self.availability_topic = availability_topic
        """The bridge's availability: this consumer's connection (its Last Will)."""
        if device_availability_topic is not None:
            _check_text("MqttConsumer", "device_availability_topic", device_availability_topic)
            fields = _template_fields(device_availability_topic, "device_availability_topic")
            if fields != {PRODUCER_FIELD}:
                check.fail("device_availability_topic", device_availability_topic,
                           "must be a template with {producer} as its only field, got "
                           f"{device_availability_topic!r}")
            if availability_topic is not None and _matches(device_availability_topic,
                                                           availability_topic):
                check.conflict("device_availability_topic", device_availability_topic,
                               "availability_topic", "the bridge and a device would share "
                               "one topic")
        self.device_availability_topic = device_availability_topic
        self.discovery = discovery
        self._seen: set[str] = set()  # producers whose records were published (online)

        if client_id is None:
            client_id = f"aioconveyor-{secrets.token_hex(6)}"
        _check_text("MqttConsumer", "client_id", client_id)
        self.client_id = client_id
        if name is None:
            name = "mqtt"
        _check_text("MqttConsumer", "name", name)
        self.name = name
        check.integer("retries", retries, minimum=0)
        check.positive("max_backoff", max_backoff)
        self.consumer_defaults: dict[str, Any] = {
            "retries": retries,
            "backoff": min(0.2, float(max_backoff)),
            "max_backoff": float(max_backoff),
        }
        if client_options is not None and not isinstance(client_options, Mapping):
            check.fail("client_options", type(client_options).__name__,
                       f"must be a mapping or None, got {type(client_options).__name__}")
        for key in client_options or {}:
            if not isinstance(key, str):
                check.fail("client_options", f"<a key {key!r}>",
                           f"keys must be str, got {key!r}")
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            check.fail("logger", logger, f"must be a logging.Logger or None, got {logger!r}")
        self._client_options = dict(client_options or {})
        clash = {"hostname", "port", "username", "password", "identifier", "will", "keepalive",
                 "timeout", "tls_context"} & set(self._client_options)
        if clash:
            check.fail("client_options", sorted(clash), f"must not set {sorted(clash)}: "
                                                           "use MqttConsumer's own arguments")
        self._log = logger if logger is not None else logging.getLogger(__name__)

        scheme = "mqtts" if self._tls is not None else "mqtt"
        user = "" if self.username is None else urllib.parse.quote(self.username, safe="")
        secret = ":***" if self._password is not None else ""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{scheme}://{user}{secret}{'@' if user else ''}{netloc}:{self.port}"
        """The broker's URL with the password masked."""

        self.rejected = 0
        """Records that could never be published (and were skipped)."""
        self._state = _State.NEW
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._limiter = LogLimiter()
        self._failed_connects = 0

    @staticmethod
    def _check_devices(discovery: Mapping[Any, Any], topic: str) -> dict[str, HaDiscovery]:
        """A ``discovery`` mapping: producer names to devices, each with its own node id,
        and a topic that tells the producers apart."""
        if not discovery:
            check.fail("discovery", discovery, "must not be an empty mapping")
        if not all(isinstance(d, HaDiscovery) for d in discovery.values()):
            check.fail("discovery", discovery, "must be a HaDiscovery, a mapping of producer "
                       f"names to HaDiscovery, or None, got {discovery!r}")
        if _template_fields(topic) != {PRODUCER_FIELD}:
            check.conflict("topic", topic, "discovery",
                           "a device per producer needs a state topic with {producer} as "
                           "its only field, like 'home/{producer}/state'")
        devices: dict[str, HaDiscovery] = {}
        node_ids: dict[str, str] = {}
        for producer, device in discovery.items():
            what = f"discovery[{producer!r}]"
            if not isinstance(producer, str) or not producer:
                check.fail("discovery", f"<a key {producer!r}>",
                           f"keys must be producer names (non-empty str), got {producer!r}")
            try:
                _one_level("the producer name", producer, topic)
            except MqttRecordError as exc:
                check.fail(what, producer, str(exc))
            if device.node_id in node_ids:
                check.fail(f"{what}.node_id", device.node_id,
                           f"repeats the node_id of discovery[{node_ids[device.node_id]!r}]: "
                           "each device needs its own")
            node_ids[device.node_id] = producer
            devices[producer] = device
        return devices

    def __repr__(self) -> str:
        return (f"<MqttConsumer {self.name!r} {self.url} topic={self.topic!r} qos={self.qos} "
                f"{self._state.value}>")

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect once (in the running loop); raises :class:`MqttConnectionError` when the
        broker is unreachable, refuses us (credentials) or has a TLS certificate we do not
        trust. In a conveyor the lane then retries ``open()`` with backoff (queuing what
        arrives meanwhile) and ``/readyz`` says not ready until it connects; once open, a
        lost connection is re-established by the next publish.
        """
        if self._state is _State.OPEN:
            raise RuntimeError(f"MqttConsumer {self.name!r} is already open; use one instance "
                               "per conveyor")
        self._state = _State.OPEN
        try:
            await self._connection()
        except BaseException:
            self._state = _State.CLOSED
            raise

    async def close(self) -> None:
        """Publish ``"offline"`` (if configured) and disconnect cleanly. Idempotent."""
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSED
        connecting = self._connecting
        if connecting is not None:
            # never cancel a connect half-way (its thread would leave a socket behind): it
            # sees the CLOSED state when done and drops the connection itself
            await asyncio.wait({connecting}, timeout=self.timeout)
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._shutdown(conn)

    async def __aenter__(self) -> MqttConsumer:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- removing what was announced -------------------------------------------------

    def discovery_topics(self, producer: str | None = None) -> list[str]:
        """The retained topics this consumer announces Home Assistant devices on: every
        entity's config topic, each device's availability topic and, for all devices
        (``producer`` None), the bridge's availability topic. With ``producer``: that
        producer's device only (the bridge's topic is shared, so it stays)."""
        if self.discovery is None:
            return []
        if producer is not None:
            if producer not in self.devices:
                have = ", ".join(repr(p) for p in self.devices) or "none (one device only)"
                check.fail("producer", producer, f"has no Home Assistant device in "
                           f"MqttConsumer {self.name!r}, got {producer!r}; its producers "
                           f"with a device: {have}")
            devices = {producer: self.devices[producer]}
        else:
            devices = dict(self.devices)
        topics: list[str] = []
        for name, device in devices.items():
            topics += device.config_topics()
            if self.device_availability_topic is not None:
                topics.append(_fill_producer(self.device_availability_topic, name))
        if isinstance(self.discovery, HaDiscovery):
            topics += self.discovery.config_topics()
        if producer is None and self.availability_topic is not None:
            topics.append(self.availability_topic)
        return topics

    async def clear_discovery(self, producer: str | None = None) -> list[str]:
        """Remove what this consumer announced to Home Assistant: publish an empty retained
        payload to each of :meth:`discovery_topics` (the broker then forgets the retained
        config, and Home Assistant removes the entity, and the device with its last
        entity). Returns the topics cleared.

        It connects on its own (client id ``<client_id>-clear``, no Last Will), so it needs
        no :meth:`open`; but stop the conveyor first, or take the device out of
        ``discovery``: a running consumer announces its devices again on every connect.
        Raises :class:`MqttConnectionError` when the broker is unreachable or refuses us.
        """
        topics = self.discovery_topics(producer)
        if not topics:
            return []
        client = aiomqtt.Client(
            self.host, self.port, username=self.username, password=self._password,
            identifier=f"{self.client_id}-clear", keepalive=self.keepalive,
            timeout=self.timeout, tls_context=self._tls, **self._client_options,
        )
        try:
            async with client:
                for topic in topics:
                    await client.publish(topic, b"", qos=1, retain=True, timeout=self.timeout)
        except aiomqtt.MqttError as exc:
            _abort(client)
            _close_sockets_left_in(exc)
            raise MqttConnectionError(f"MQTT broker {self.url}: clearing the Home Assistant "
                                      f"discovery failed: {_reason(exc)}",
                                      refused=isinstance(exc, MqttConnectError)) from exc
        self._log.info("MQTT consumer %s: cleared %d retained discovery topic(s) at %s",
                       self.name, len(topics), self.url)
        return topics

    # -- publishing ------------------------------------------------------------------

    async def __call__(self, data: Any, event_time: datetime) -> None:
        """Publish ``data`` (one record, or a :class:`~aioconveyor.Batch`), awaiting the
        broker's acknowledgements with QoS >= 1."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"MqttConsumer {self.name!r} is {self._state.value}: "
                               "call open() first (the conveyor does)")
        messages: list[_Message] = []
        problems: list[MqttRecordError] = []
        coming_online: set[str] = set()
        for when, item, producer in iter_produced(data, event_time):
            try:
                message = self._message(item, when, producer)
                if (self.device_availability_topic is not None and producer
                        and producer not in self._seen and producer not in coming_online):
                    messages.append(self._device_state(producer, ONLINE))
                    coming_online.add(producer)
            except MqttRecordError as exc:
                problems.append(exc)
            else:
                messages.append(message)
        if messages:
            await self._publish(messages)
            self._seen |= coming_online
        if problems:
            self.rejected += len(problems)
            if len(problems) == 1:
                if messages and problems[0].count is None:
                    problems[0].count = 1  # the others went out: only this one is rejected
                raise problems[0]
            raise MqttRecordError(f"{len(problems)} records could not be published; the first: "
                                  f"{problems[0]}", count=len(problems)) from problems[0]

    def _message(self, data: Any, event_time: datetime, producer: str = "") -> _Message:
        topic = (self._topic_for(data, event_time, producer) if self._topic_fields
                 else self.topic)
        return _Message(topic, self._payload(data, event_time), self.qos, self.retain)

    def _device_state(self, producer: str, state: str) -> _Message:
        """The retained availability of ``producer``'s device."""
        template = self.device_availability_topic
        assert template is not None
        topic = _fill_producer(template, _one_level("the producer name", producer, template))
        return _Message(topic, state.encode(), 1, True)

    def _topic_for(self, data: Any, event_time: datetime, producer: str = "") -> str:
        values: dict[str, Any] = {"event_time": event_time}
        values.update(_fields(data, event_time) or {})
        if producer:  # the record's producer; a field of that name only stands in for none
            values[PRODUCER_FIELD] = producer
        when = event_time.isoformat()
        try:
            topic = self._fill(values, event_time, when)
        except MqttRecordError:
            raise
        except KeyError as exc:
            if exc.args[0] == PRODUCER_FIELD:
                raise MqttRecordError(
                    f"topic {self.topic!r} needs the record's producer, and the record of "
                    f"{when} has none (it did not come from a conveyor's producer) and no "
                    f"{PRODUCER_FIELD!r} field") from None
            have = ", ".join(sorted(str(k) for k in values if k != "event_time")) or "none"
            raise MqttRecordError(
                f"topic {self.topic!r} needs field {exc.args[0]!r}, which the record of "
                f"{when} lacks (it has: {have})"
            ) from None
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise MqttRecordError(f"topic {self.topic!r} cannot be filled from the record of "
                                  f"{when}: {type(exc).__name__}: {exc}") from exc
        try:
            _check_topic(f"topic {self.topic!r} filled from the record of {when}", topic)
        except ValueError as exc:
            raise MqttRecordError(str(exc)) from None
        return topic

    def _fill(self, values: Mapping[str, Any], event_time: datetime, when: str) -> str:
        """The topic with every field filled in. A value taken from the record must be one
        topic level: a ``/`` would add levels, ``+`` / ``#`` are wildcards, NUL is invalid.
        (The tick's own ``event_time`` may hold ``/`` through its format spec: the template
        asks for it.)"""
        out: list[str] = []
        for literal, field, spec, conversion in _FORMATTER.parse(self.topic):
            out.append(literal)
            if field is None:
                continue
            value, root = _FORMATTER.get_field(field, (), values)
            text = _FORMATTER.format_field(_FORMATTER.convert_field(value, conversion),
                                           spec or "")
            if root == "event_time" and values["event_time"] is event_time:
                out.append(text)
                continue
            bad = [c for c in ("/", "+", "#", "\0") if c in text]
            if bad:
                raise MqttRecordError(
                    f"topic {self.topic!r}: field {field!r} of the record of {when} is "
                    f"{text!r}, which holds {bad[0]!r}; a value fills exactly one topic level "
                    "(no '/', '+', '#' or NUL)")
            out.append(text)
        return "".join(out)

    def _payload(self, data: Any, event_time: datetime) -> bytes:
        when = event_time.isoformat()
        out: object
        if self.encoder is not None:
            try:
                out = self.encoder(data, event_time)
            except Exception as exc:
                raise MqttRecordError(f"encoder failed on the record of {when}: "
                                      f"{type(exc).__name__}: {exc}") from exc
        elif isinstance(data, _PASSTHROUGH):
            out = data
        else:
            out = self._json(data, event_time)
        if isinstance(out, str):
            payload = out.encode()
        elif isinstance(out, bytes | bytearray | memoryview):
            payload = bytes(out)
        else:
            raise MqttRecordError(f"encoder must return bytes or str, got "
                                  f"{type(out).__name__} for the record of {when}")
        if len(payload) > _MAX_PAYLOAD_BYTES:
            raise MqttRecordError(f"the payload of the record of {when} is {len(payload)} "
                                  f"bytes, more than MQTT allows")
        return payload

    def _json(self, data: Any, event_time: datetime) -> str:
        """The default payload: JSON, with ``event_time_key`` added to a mapping."""
        value: Any = _fields(data, event_time)
        if value is None:
            value = data
        elif self.event_time_key is not None:
            value = dict(value)
            value.setdefault(self.event_time_key, event_time)
        try:
            return json_dumps(value)
        except Exception as exc:  # the data's own fault: retrying cannot help
            raise MqttRecordError(f"the record of {event_time.isoformat()} cannot be encoded "
                                  f"as JSON: {type(exc).__name__}: {exc}") from exc

    async def _publish(self, messages: Sequence[_Message]) -> None:
        conn = await self._connection()
        try:
            await self._publish_on(conn, messages)
        except aiomqtt.MqttError as exc:
            self._drop(conn)
            raise MqttConnectionError(f"MQTT broker {self.url}: publish failed: "
                                      f"{_reason(exc)}") from exc

    async def _publish_on(self, conn: _Connection, messages: Sequence[_Message]) -> None:
        """Publish in order, then wait for every acknowledgement, or for the connection to
        drop (aiomqtt alone would wait for the PUBACK until ``timeout``)."""
        if all(m.qos == 0 for m in messages):
            # nothing to acknowledge: hand them to the socket one after the other
            for m in messages:
                if not conn.alive:
                    raise aiomqtt.MqttError("connection lost while publishing")
                await conn.client.publish(m.topic, m.payload, qos=0, retain=m.retain,
                                          timeout=self.timeout)
            return
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(
                conn.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain,
                                    timeout=self.timeout),
                name=f"aioconveyor.mqtt[{self.name}].publish",
            )
            for m in messages
        ]
        pending = set(tasks)
        try:
            while pending:
                await asyncio.wait(pending | {conn.watcher}, return_when=asyncio.FIRST_COMPLETED)
                for task in [t for t in pending if t.done()]:
                    pending.discard(task)
                    task.result()  # a failed publish raises its MqttError
                if pending and not conn.alive:
                    raise aiomqtt.MqttError(f"connection lost before the broker acknowledged "
                                            f"{len(pending)} message(s)")
            conn.unacked_since = None
        except asyncio.CancelledError:
            if pending and conn.unacked_since is None:
                conn.unacked_since = time.monotonic()
            raise
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: a second failure is not logged by asyncio

    # -- connection ------------------------------------------------------------------

    async def _connection(self) -> _Connection:
        """The live connection, connecting (once, shared by concurrent callers) if needed."""
        conn = self._conn
        if conn is not None:
            if not conn.alive:
                self._conn = None
            elif (conn.unacked_since is not None
                  and time.monotonic() - conn.unacked_since > self.timeout):
                self._log.warning("MQTT consumer %s: no PUBACK from %s for %g s; reconnecting",
                                  self.name, self.url, self.timeout)
                self._drop(conn)
            else:
                return conn
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect(), name=f"aioconveyor.mqtt[{self.name}].connect"
            )
        # shielded: a caller cancelled by its lane timeout leaves the connect running, and
        # the lane's next attempt picks up its result
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection:
        try:
            will = None
            if self.availability_topic is not None:
                will = aiomqtt.Will(self.availability_topic, OFFLINE, qos=1, retain=True)
            client = aiomqtt.Client(
                self.host, self.port, username=self.username, password=self._password,
                identifier=self.client_id, will=will, keepalive=self.keepalive,
                timeout=self.timeout, tls_context=self._tls, **self._client_options,
            )
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                _abort(client)  # a CONNACK that never came leaves the socket open
                _close_sockets_left_in(exc)
                self._failed_connects += 1
                # aiomqtt keeps only the text of the ssl module's error
                untrusted = "CERTIFICATE_VERIFY_FAILED" in str(exc)
                refused = isinstance(exc, MqttConnectError) or untrusted
                self._limiter.log(
                    self._log, logging.DEBUG, "connect",
                    "MQTT consumer %s: cannot connect to %s: %s", self.name, self.url, exc,
                )
                what = ("has a TLS certificate we do not trust" if untrusted
                        else "refused the connection" if refused else "unreachable")
                raise MqttConnectionError(f"MQTT broker {self.url} {what}: {exc}",
                                          refused=refused) from exc
            watcher = asyncio.get_running_loop().create_task(
                _watch(client), name=f"aioconveyor.mqtt[{self.name}].watch"
            )
            conn = _Connection(client, watcher)
            watcher.add_done_callback(lambda task: self._lost(conn, task))
            try:
                if self._state is not _State.OPEN:
                    raise MqttConnectionError(f"MqttConsumer {self.name!r} closed while "
                                              "connecting")
                await self._publish_on(conn, self._announcements())
            except aiomqtt.MqttError as exc:
                self._drop(conn)
                raise MqttConnectionError(f"MQTT broker {self.url}: announcing failed: "
                                          f"{_reason(exc)}") from exc
            except BaseException:
                self._drop(conn)
                raise
            self._conn = conn
            if self._failed_connects:
                self._log.info("MQTT consumer %s: connected to %s after %d failed attempt(s)",
                               self.name, self.url, self._failed_connects)
            else:
                self._log.info("MQTT consumer %s: connected to %s", self.name, self.url)
            self._failed_connects = 0
            return conn
        finally:
            self._connecting = None

    def _announcements(self) -> list[_Message]:
        """Discovery configs, then ``"online"``: published (retained) on every connect."""
        out: list[_Message] = []
        device_topic = self.device_availability_topic
        for producer, device in self.devices.items():
            state_topic = _fill_producer(self.topic, producer)
            own = None if device_topic is None else _fill_producer(device_topic, producer)
            for entity in device.entities:
                config = device.config(entity, state_topic=state_topic, qos=self.qos,
                                       availability_topic=self.availability_topic,
                                       device_availability_topic=own)
                out.append(_Message(device.config_topic(entity), json_dumps(config).encode(),
                                    1, True))
        if device_topic is not None:
            for producer in sorted(set(self.devices) | self._seen):
                out.append(self._device_state(producer,
                                              ONLINE if producer in self._seen else OFFLINE))
        if isinstance(self.discovery, HaDiscovery):
            for entity in self.discovery.entities:
                config = self.discovery.config(
                    entity, state_topic=self.topic, availability_topic=self.availability_topic,
                    qos=self.qos,
                )
                out.append(_Message(self.discovery.config_topic(entity),
                                    json_dumps(config).encode(), 1, True))
        if self.availability_topic is not None:
            out.append(_Message(self.availability_topic, ONLINE.encode(), 1, True))
        return out

    def _lost(self, conn: _Connection, task: asyncio.Task[None]) -> None:
        """Done callback of the watcher: log an unexpected loss (once per connection)."""
        if task.cancelled():
            return
        exc = task.exception()
        if conn.finished:
            return
        conn.finished = True
        # the watcher's own error only says "Disconnected during message iteration"
        reason = (exc.__cause__ or exc) if exc is not None else "closed by the broker"
        self._log.warning("MQTT consumer %s: lost the connection to %s: %s",
                          self.name, self.url, reason)

    def _drop(self, conn: _Connection) -> None:
        """Forget ``conn`` and close it without waiting (the next call reconnects)."""
        if self._conn is conn:
            self._conn = None
        conn.finished = True
        _abort(conn.client)

    async def _shutdown(self, conn: _Connection) -> None:
        """Clean close: ``"offline"``, then DISCONNECT (so the broker drops the Last Will)."""
        try:
            goodbye: list[_Message] = []
            if self.device_availability_topic is not None:
                goodbye += [self._device_state(p, OFFLINE)
                            for p in sorted(set(self.devices) | self._seen)]
            if self.availability_topic is not None:
                goodbye.append(_Message(self.availability_topic, OFFLINE.encode(), 1, True))
            if conn.alive and goodbye:
                await self._publish_on(conn, goodbye)
            conn.finished = True
            await conn.client.__aexit__(None, None, None)
        except Exception as exc:
            self._log.warning("MQTT consumer %s: could not close the connection to %s cleanly: "
                              "%s", self.name, self.url, _reason(exc))
            self._drop(conn)
        except BaseException:
            self._drop(conn)
            raise
        finally:
            conn.finished = True
        await asyncio.wait({conn.watcher}, timeout=1.0)
        if not conn.watcher.done():
            conn.watcher.cancel()


def _fields(data: Any, event_time: datetime) -> Mapping[str, Any] | None:
    """The record as a mapping (mapping, dataclass, ``model_dump()``), or None if it is not
    one; a ``model_dump()`` that fails is the record's fault."""
    if isinstance(data, _PASSTHROUGH):
        return None
    try:
        return as_mapping(data)
    except TypeError:
        return None
    except Exception as exc:
        raise MqttRecordError(f"the record of {event_time.isoformat()} cannot be read as a "
                              f"mapping: {type(exc).__name__}: {exc}") from exc


def _reason(exc: BaseException) -> str:
    """aiomqtt's exception text, with its cause when that says more ("connection lost")."""
    cause = exc.__cause__
    return f"{exc} ({cause})" if cause is not None and str(cause) else str(exc)
