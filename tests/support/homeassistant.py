"""What Home Assistant does with MQTT discovery, for the tests: subscribe to the discovery
prefix, take each retained ``<component>/[<node_id>/]<object_id>/config``, expand the
abbreviations, validate the config the way its sensor / binary_sensor discovery schemas
and sensor entities do, and render the ``value_template`` (jinja2, sandboxed like Home
Assistant's) against a state payload.

The rules are Home Assistant's (``homeassistant/components/mqtt/{sensor,binary_sensor,
schemas,discovery}.py`` and ``components/sensor/entity.py`` of the release the tables come
from), applied to its own tables (``aioconveyor.consumers._ha_tables``); nothing here is
aioconveyor's code, so it checks the consumer from outside.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiomqtt
import jinja2
import jinja2.sandbox

from aioconveyor.consumers import _ha_tables as ha
from support.services import host_port

TOPIC_MATCHER = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")
"""Home Assistant's discovery topic pattern (after the prefix)."""

AVAILABILITY_MODES = ("all", "any", "latest")

_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)


@dataclass
class Discovered:
    topic: str
    component: str
    node_id: str | None
    object_id: str
    config: dict[str, Any]
    """Expanded: every abbreviation replaced by its long name."""


def _replace(payload: Any, table: dict[str, str]) -> None:
    if isinstance(payload, dict):
        for key in set(table).intersection(payload):
            payload[table[key]] = payload.pop(key)


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """Home Assistant's ``_replace_all_abbreviations`` and ``~`` topic base."""
    config = json.loads(json.dumps(payload))
    _replace(config, ha.ABBREVIATIONS)
    availability = config.get("availability")
    for entry in availability if isinstance(availability, list) else [availability]:
        _replace(entry, ha.ABBREVIATIONS)
    _replace(config.get("origin"), ha.ORIGIN_ABBREVIATIONS)
    _replace(config.get("device"), ha.DEVICE_ABBREVIATIONS)
    if "~" in config:
        base = config.pop("~")
        for key, value in list(config.items()):
            if isinstance(value, str) and key.endswith("topic"):
                config[key] = value.replace("~", base, 1) if value.startswith("~") else (
                    value[:-1] + base if value.endswith("~") else value)
    return config


async def discover(url: str, prefix: str = "homeassistant", *,
                   node_ids: set[str] | None = None) -> dict[str, Discovered]:
    """The retained discovery configs under ``prefix`` right now, as Home Assistant takes
    them (``prefix/#``, matched with its topic pattern; an empty payload is none)."""
    host, port = host_port(url, 1883)
    sentinel = f"aioconveyor-test/ha-sentinel/{uuid.uuid4().hex[:12]}"
    found: dict[str, Discovered] = {}
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(f"{prefix}/#", qos=1)
        await client.subscribe(sentinel, qos=1)
        await client.publish(sentinel, b"done", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                topic = str(message.topic)
                if topic == sentinel:
                    break
                match = TOPIC_MATCHER.fullmatch(topic.removeprefix(f"{prefix}/"))
                if match is None or not message.payload:
                    continue
                component, node_id, object_id = match.groups()
                if node_ids is not None and node_id not in node_ids:
                    continue
                assert isinstance(message.payload, bytes)
                found[topic] = Discovered(topic, component, node_id, object_id,
                                          expand(json.loads(message.payload)))
    return found


# -- the checks --------------------------------------------------------------------------


def problems(entity: Discovered) -> list[str]:
    """What Home Assistant would refuse (the discovery schema) or complain about (the
    sensor entity's checks: its warnings break statistics) in ``entity``'s config."""
    config, component = entity.config, entity.component
    out: list[str] = []
    keys = {"sensor": ha.SENSOR_KEYS, "binary_sensor": ha.BINARY_SENSOR_KEYS}.get(component)
    if keys is None:
        return [f"component {component!r} is not checked here"]
    if unknown := sorted(set(config) - keys):
        out.append(f"keys the {component} schema drops: {unknown}")
    if not isinstance(config.get("state_topic"), str) or not config["state_topic"]:
        out.append("no state_topic")
    if "availability" in config and "availability_topic" in config:
        out.append("availability and availability_topic are exclusive")
    for entry in config.get("availability", []):
        if not isinstance(entry, dict) or not entry.get("topic"):
            out.append(f"availability entry without a topic: {entry!r}")
        elif unknown := sorted(set(entry) - {"topic", "payload_available",
                                             "payload_not_available", "value_template"}):
            out.append(f"availability entry keys HA refuses: {unknown}")
    if config.get("availability_mode", "latest") not in AVAILABILITY_MODES:
        out.append(f"availability_mode {config['availability_mode']!r}")
    if config.get("qos", 0) not in (0, 1, 2):
        out.append(f"qos {config['qos']!r}")
    device = config.get("device")
    if device is not None:
        if unknown := sorted(set(device) - ha.DEVICE_KEYS):
            out.append(f"device keys HA refuses: {unknown}")
        if not device.get("identifiers") and not device.get("connections"):
            out.append("device without identifiers or connections")
    origin = config.get("origin")
    if origin is not None and (set(origin) - ha.ORIGIN_KEYS or "name" not in origin):
        out.append(f"origin HA refuses: {origin!r}")
    category = config.get("entity_category")
    if category is not None and (category not in ha.ENTITY_CATEGORIES or category == "config"):
        out.append(f"entity_category {category!r} (sensors take 'diagnostic' only)")
    if "icon" in config and ":" not in str(config["icon"]):
        out.append(f"icon {config['icon']!r} is not 'prefix:name'")
    for key in ("expire_after", "suggested_display_precision", "off_delay"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            out.append(f"{key} {value!r} is not an int >= 0")
    for key in ("force_update", "enabled_by_default", "visible_by_default"):
        if key in config and not isinstance(config[key], bool):
            out.append(f"{key} {config[key]!r} is not a bool")
    if component == "binary_sensor":
        device_class = config.get("device_class")
        if device_class is not None and str(device_class).lower() not in (
                ha.BINARY_SENSOR_DEVICE_CLASSES):
            out.append(f"binary_sensor device_class {device_class!r}")
        return out
    return out + _sensor_problems(config)


def _sensor_problems(config: dict[str, Any]) -> list[str]:
    """``validate_sensor_state_and_device_class_config`` and the sensor entity's checks."""
    out: list[str] = []
    device_class = config.get("device_class")
    state_class = config.get("state_class")
    if device_class is not None:
        device_class = str(device_class).lower()
        if device_class not in ha.SENSOR_DEVICE_CLASSES:
            return [f"sensor device_class {config['device_class']!r}"]
    if state_class is not None:
        state_class = str(state_class).lower()
        if state_class not in ha.STATE_CLASSES:
            return [f"state_class {config['state_class']!r}"]
    unit = config.get("unit_of_measurement")
    if "last_reset_value_template" in config and state_class != "total":
        out.append("last_reset_value_template needs state_class 'total'")
    options = config.get("options")
    if options is not None:
        if not options:
            out.append("an empty options list")
        if state_class or unit:
            out.append("options together with state_class or unit_of_measurement")
        if device_class != "enum":
            out.append(f"options need device_class 'enum', got {device_class!r}")
    if state_class in ha.STATE_CLASS_UNITS and unit not in ha.STATE_CLASS_UNITS[state_class]:
        out.append(f"unit {unit!r} with state_class {state_class!r}")
    if unit is not None:
        unit = ha.AMBIGUOUS_UNITS.get(unit, unit)
    if device_class in ha.NON_NUMERIC_DEVICE_CLASSES and unit:
        out.append(f"a unit on the non-numeric device class {device_class!r}")
    if device_class in ha.DEVICE_CLASS_UNITS and unit not in ha.DEVICE_CLASS_UNITS[device_class]:
        out.append(f"unit {unit!r} is not one of device class {device_class!r}'s units")
    allowed = ha.DEVICE_CLASS_STATE_CLASSES.get(device_class or "")
    if state_class and device_class and allowed is not None and state_class not in allowed:
        out.append(f"state_class {state_class!r} is impossible for device class "
                   f"{device_class!r} (expected {sorted(allowed)})")
    return out


def render(template: str, payload: bytes) -> str:
    """``value_template`` rendered as Home Assistant's MQTT entities do: ``value`` is the
    payload text, ``value_json`` the payload parsed as JSON."""
    text = payload.decode("utf-8")
    variables: dict[str, Any] = {"value": text}
    try:
        variables["value_json"] = json.loads(text)
    except ValueError:
        pass
    return _ENV.from_string(template).render(**variables).strip()


def state_problems(entity: Discovered, state: str) -> list[str]:
    """What Home Assistant would refuse in the rendered ``state`` of ``entity``."""
    config = entity.config
    if entity.component == "binary_sensor":
        on, off = config.get("payload_on", "ON"), config.get("payload_off", "OFF")
        return [] if state in (on, off) else [f"{state!r} is neither {on!r} nor {off!r}"]
    device_class = config.get("device_class")
    if config.get("options") is not None:
        return [] if state in config["options"] else [
            f"{state!r} is not one of the options {config['options']}"]
    if device_class in ("timestamp", "date"):
        try:
            datetime.fromisoformat(state)
        except ValueError:
            return [f"{state!r} is not an ISO date/time"]
        return []
    numeric = device_class not in ha.NON_NUMERIC_DEVICE_CLASSES and any(
        config.get(k) is not None for k in ("device_class", "state_class",
                                            "unit_of_measurement",
                                            "suggested_display_precision"))
    if numeric:
        try:
            number = float(state)
        except ValueError:
            return [f"{state!r} is not a number"]
        if not math.isfinite(number):
            return [f"{state!r} is not finite"]
    return []
