"""Home Assistant MQTT discovery: the entities and devices :class:`MqttConsumer` announces,
checked against Home Assistant's own tables (``_ha_tables``) when they are built.

Home Assistant drops a discovery config it cannot validate and logs the reason only in its
own log; a unit it does not expect breaks the entity's long-term statistics. So every
mistake Home Assistant would refuse (or silently mishandle) is a :class:`SettingError` here,
with a hint in Home Assistant's spelling.
"""

from __future__ import annotations

import difflib
import inspect
import json
import keyword
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aioconveyor import __version__
from aioconveyor.kit import check

from . import _ha_tables as ha

__all__ = ["HaBinarySensor", "HaDiscovery", "HaSensor"]

ONLINE = "online"
OFFLINE = "offline"

_OBJECT_ID = re.compile(r"[^A-Za-z0-9_-]+")
_NODE_ID = re.compile(r"[A-Za-z0-9_-]+")

_LONG_NAMES = frozenset(ha.ABBREVIATIONS.values())

_DEVICE_CLASS_ALIASES = {
    "amps": "current", "ampere": "current", "amperage": "current", "watts": "power",
    "watt": "power", "temp": "temperature", "co2": "carbon_dioxide", "co": "carbon_monoxide",
    "soc": "battery", "state_of_charge": "battery", "rssi": "signal_strength",
    "wifi": "signal_strength", "kwh": "energy", "wh": "energy", "lux": "illuminance",
    "hz": "frequency", "volt": "voltage", "volts": "voltage", "cosphi": "power_factor",
}
"""Words people write for a device class, beyond what a close spelling finds."""

_BINARY_CLASS_ALIASES = {
    "fault": "problem", "error": "problem", "alarm": "problem", "warning": "problem",
    "failure": "problem", "online": "connectivity", "connection": "connectivity",
    "connected": "connectivity", "on": "power", "open": "opening", "charging":
    "battery_charging", "low_battery": "battery", "leak": "moisture", "water": "moisture",
}
"""The same for binary sensors (an inverter fault is ``problem``)."""

_SET_BY_CONSUMER = frozenset({
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "name", "origin", "payload_available", "payload_not_available", "qos",
    "state_topic", "unique_id", "value_template", "encoding", "default_entity_id",
})
"""Discovery keys the consumer writes itself (``default_entity_id`` comes from the
unique id)."""


# -- hints -----------------------------------------------------------------------------


def _spelling(value: str) -> str:
    return value.strip().lower().replace("-", "_").replace(" ", "_")


def _close(word: str, choices: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _units_of(unit: str) -> list[str]:
    """The sensor device classes whose units include ``unit`` (case-insensitive)."""
    unit = ha.AMBIGUOUS_UNITS.get(unit, unit)
    return [dc for dc, units in ha.DEVICE_CLASS_UNITS.items()
            if unit in units or any(u is not None and u.lower() == unit.lower() for u in units)]


def _unit_list(units: frozenset[str | None]) -> str:
    shown = sorted((u for u in units if u is not None), key=lambda u: (u.lower(), u))
    text = ", ".join(repr(u) for u in shown)
    if None in units:
        text = f"{text} or no unit" if text else "no unit"
    return text


def _one_of(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _choice(owner: str, name: str, value: object, table: Sequence[str], what: str,
            aliases: Mapping[str, str] | None = None, *, units: bool = False) -> str | None:
    """``value`` as Home Assistant takes it (it lowercases), or a SettingError with the
    closest of ``table`` (or, with ``units``, the device classes of a unit given instead)."""
    if value is None:
        return None
    check.text(name, value, subject=f"{owner} {name}")
    assert isinstance(value, str)
    if value.lower() in table:
        return value.lower()
    spelled = _spelling(value)
    hint = spelled if spelled in table else (aliases or {}).get(spelled) or _close(spelled,
                                                                                    table)
    unit_of = _units_of(value) if units else []
    reason = f"must be a Home Assistant {what}, got {value!r}"
    if unit_of:
        reason += (f"; {value!r} is a unit (unit={value!r}) of device_class "
                   f"{' or '.join(repr(d) for d in unit_of[:3])}")
    elif hint:
        reason += f" (did you mean {hint!r}?)"
    else:
        reason += f"; Home Assistant knows: {_one_of(sorted(table))}"
    check.fail(name, value, reason, subject=f"{owner} {name}")


def _check_text(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    check.text(name, value, subject=f"{owner} {name}")


def _check_icon(owner: str, icon: object) -> None:
    if icon is None:
        return
    _check_text(owner, "icon", icon)
    assert isinstance(icon, str)
    if not re.fullmatch(r"[^\s:]+:\S+", icon):  # Home Assistant asks for "prefix:name"
        check.fail("icon", icon, "must be an icon as Home Assistant names them, "
                   f"'prefix:name' like 'mdi:solar-power', got {icon!r}",
                   subject=f"{owner} icon")


def _check_category(owner: str, category: object) -> str | None:
    """Sensors and binary sensors take ``diagnostic`` only: HA refuses ``config`` there."""
    value = _choice(owner, "entity_category", category, ha.ENTITY_CATEGORIES, "entity category")
    if value == "config":
        check.fail("entity_category", category, "'config' is for entities that change a "
                   "device's settings; Home Assistant refuses it for a sensor or binary "
                   "sensor: use 'diagnostic' (or leave it out)",
                   subject=f"{owner} entity_category")
    return value


def _check_extra(owner: str, extra: object, keys: frozenset[str],
                 arguments: Mapping[str, str]) -> dict[str, Any]:
    """The pass-through discovery keys: HA's long names of this platform, JSON values, none
    that the consumer sets or that has an argument of its own."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        check.fail("extra", extra, "must be a mapping of Home Assistant discovery keys to "
                   f"values, got {extra!r}", subject=f"{owner} extra")
    out: dict[str, Any] = {}
    for key, value in extra.items():
        name = f"extra[{key!r}]"
        if not isinstance(key, str):
            check.fail("extra", extra, f"keys must be str, got {key!r}",
                       subject=f"{owner} extra")
        subject = f"{owner} {name} = {value!r}:"
        long = ha.ABBREVIATIONS.get(key)
        if long is not None and long != key:
            check.fail(name, value, f"{key!r} is Home Assistant's abbreviation of {long!r}; "
                       "write the long name (the consumer writes configs in full)",
                       subject=subject)
        if key in arguments:
            check.fail(name, value, f"{key!r} is {owner}'s argument {arguments[key]!r}; pass "
                       f"{arguments[key]}={value!r} instead", subject=subject)
        if key in _SET_BY_CONSUMER:
            check.fail(name, value, f"{key!r} is set by the consumer (from the topic, the "
                       "device and the key)", subject=subject)
        if key not in keys:
            hint = _close(key, sorted(keys))
            why = f"is not a key of Home Assistant's {owner} discovery schema (it drops it)"
            if key in _LONG_NAMES:
                why = f"is a discovery key of other entity kinds, not of {owner}"
            check.fail(name, value, f"{key!r} {why}" + (f" (did you mean {hint!r}?)"
                                                         if hint else ""), subject=subject)
        if key in ("enabled_by_default", "force_update", "visible_by_default"):
            check.boolean(name, value)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            check.fail(name, value, "must be a JSON value (str, number, bool, list, dict)",
                       subject=subject)
        out[key] = value
    return out


def _object_id(key: str) -> str:
    return _OBJECT_ID.sub("_", key).strip("_") or "value"


def _value_expression(key: str) -> str:
    """``value_json.<key>`` (or ``value_json["<key>"]`` where the attribute would not do)."""
    if key.isidentifier() and not keyword.iskeyword(key) and not hasattr(dict, key):
        return f"value_json.{key}"
    # value_json.items would be the dict method: index instead
    return f"value_json[{json.dumps(key)}]"


def _non_negative_int(owner: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    check.integer(name, value, minimum=0, unit="seconds" if name.endswith("after") else "")
    assert isinstance(value, int)
    return value


# -- entities --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HaSensor:
    """One Home Assistant ``sensor`` read from a key of the JSON state payload.

    ``key`` names the payload field (``value_template`` becomes ``{{ value_json.<key> }}``);
    ``name`` is what Home Assistant shows. Every other argument is a discovery key, checked
    against Home Assistant's tables at construction:

    * ``unit`` (``unit_of_measurement``): one the ``device_class`` allows (``energy``: Wh,
      kWh, ...; ``power``: W, kW, ...);
    * ``device_class`` / ``state_class``: Home Assistant's names; the pair must be one HA
      keeps statistics for (``energy`` is ``total`` or ``total_increasing``, never
      ``measurement``);
    * ``options``: the states of a ``device_class="enum"`` sensor (required there; no unit
      and no state class);
    * ``expire_after`` (s: unavailable when no state came for that long),
      ``suggested_display_precision`` (decimals), ``entity_category`` (``"diagnostic"``),
      ``icon`` (``"mdi:flash"``);
    * ``extra``: any other key of Home Assistant's sensor discovery schema, by its long name
      (``{"force_update": True}``).
    """

    key: str
    name: str
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    icon: str | None = None
    options: Sequence[str] | None = None
    expire_after: int | None = None
    suggested_display_precision: int | None = None
    entity_category: str | None = None
    extra: Mapping[str, Any] | None = field(default=None, hash=False)

    component: ClassVar[str] = "sensor"
    """The Home Assistant platform (the discovery topic's component level)."""
    ARGUMENTS: ClassVar[Mapping[str, str]] = {
        "unit_of_measurement": "unit", "device_class": "device_class",
        "state_class": "state_class", "icon": "icon", "options": "options",
        "expire_after": "expire_after",
        "suggested_display_precision": "suggested_display_precision",
        "entity_category": "entity_category",
    }
    """Home Assistant's discovery key -> this class's argument, where they differ or match."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        _refuse_ha_names(cls, kwargs)
        return object.__new__(cls)

    def __post_init__(self) -> None:
        owner = "HaSensor"
        _check_text(owner, "key", self.key)
        _check_text(owner, "name", self.name)
        _check_text(owner, "unit", self.unit, optional=True)
        device_class = _choice(owner, "device_class", self.device_class,
                               ha.SENSOR_DEVICE_CLASSES, "sensor device class",
                               _DEVICE_CLASS_ALIASES, units=True)
        state_class = _choice(owner, "state_class", self.state_class, ha.STATE_CLASSES,
                              "state class")
        object.__setattr__(self, "device_class", device_class)
        object.__setattr__(self, "state_class", state_class)
        _check_icon(owner, self.icon)
        object.__setattr__(self, "entity_category", _check_category(owner,
                                                                    self.entity_category))
        _non_negative_int(owner, "expire_after", self.expire_after)
        _non_negative_int(owner, "suggested_display_precision", self.suggested_display_precision)
        object.__setattr__(self, "options", self._check_options(device_class, state_class))
        self._check_unit(device_class, state_class)
        object.__setattr__(self, "extra", _check_extra(owner, self.extra, ha.SENSOR_KEYS,
                                                       self.ARGUMENTS))

    def _check_options(self, device_class: str | None,
                       state_class: str | None) -> tuple[str, ...] | None:
        options = self.options
        if options is None:
            if device_class == "enum":
                check.fail("options", None, "is required with device_class='enum': the list "
                           "of states the sensor can be in, like ['producing', 'sleeping']",
                           subject="HaSensor options")
            return None
        if isinstance(options, str | bytes) or not isinstance(options, Sequence):
            check.fail("options", options, f"must be a list of str, got {options!r}",
                       subject="HaSensor options")
        if not options:
            check.fail("options", options, "must not be empty (Home Assistant refuses an "
                       "empty options list)", subject="HaSensor options")
        for i, option in enumerate(options):
            _check_text("HaSensor", f"options[{i}]", option)
            if option in options[:i]:
                check.fail(f"options[{i}]", option, f"repeats {option!r}",
                           subject=f"HaSensor options[{i}]")
        if device_class != "enum":
            check.fail("options", options, "needs device_class='enum' (Home Assistant "
                       f"accepts options only on an enum sensor), got device_class="
                       f"{device_class!r}", subject="HaSensor options")
        return tuple(options)

    def _check_unit(self, device_class: str | None, state_class: str | None) -> None:
        unit = self.unit
        if device_class in ha.NON_NUMERIC_DEVICE_CLASSES:
            for name, value in (("unit", unit), ("state_class", state_class),
                                ("suggested_display_precision",
                                 self.suggested_display_precision)):
                if value is not None:
                    check.fail(name, value, f"is for numbers; device_class={device_class!r} "
                               "is not numeric, so Home Assistant refuses it (leave "
                               f"{name} out)", subject=f"HaSensor {name}")
        if state_class is not None and state_class in ha.STATE_CLASS_UNITS:
            allowed = ha.STATE_CLASS_UNITS[state_class]
            if unit not in allowed:
                check.fail("unit", unit, f"must be {_unit_list(allowed)} with "
                           f"state_class={state_class!r}, got {unit!r}", subject="HaSensor unit")
        if device_class is not None and device_class in ha.DEVICE_CLASS_UNITS:
            allowed = ha.DEVICE_CLASS_UNITS[device_class]
            normal = None if unit is None else ha.AMBIGUOUS_UNITS.get(unit, unit)
            if normal not in allowed:
                units = _unit_list(allowed)
                if unit is None:
                    reason = (f"is required for device_class={device_class!r}: one of {units}"
                              " (Home Assistant's units for it)")
                else:
                    reason = (f"must be {units} for device_class={device_class!r} (Home "
                              f"Assistant's units for it), got {unit!r}")
                    same = [u for u in allowed if u is not None and u.lower() == unit.lower()]
                    # W for an energy (Wh), kWh for a power (kW)
                    timed = [u for u in (f"{unit}h", unit[:-1]) if u and u in allowed]
                    others = [d for d in _units_of(unit) if d != device_class]
                    if same or timed:
                        reason += f" (did you mean {(same or timed)[0]!r}?)"
                    if others:
                        reason += (f"; {unit!r} is a unit of device_class "
                                   f"{' or '.join(repr(d) for d in others[:3])}")
                check.fail("unit", unit, reason, subject="HaSensor unit")
        if device_class is not None and state_class is not None:
            allowed_states = ha.DEVICE_CLASS_STATE_CLASSES.get(device_class)
            if allowed_states is not None and state_class not in allowed_states:
                expected = (" or ".join(repr(s) for s in sorted(allowed_states))
                            if allowed_states else "none (leave state_class out)")
                why = {
                    "total": "a running total: a meter reading",
                    "total_increasing": "a counter that only grows (a meter reading; a drop "
                                        "to 0 starts a new cycle)",
                    "measurement": "a value measured now (power, voltage, temperature)",
                }
                note = "; ".join(f"{s!r} is {why[s]}" for s in sorted(allowed_states)
                                 if s in why)
                check.fail("state_class", state_class,
                           f"must be {expected} for device_class={device_class!r}, got "
                           f"{state_class!r}: Home Assistant keeps no statistics for the "
                           f"pair (and logs a warning){'; ' + note if note else ''}",
                           subject="HaSensor state_class")

    @property
    def object_id(self) -> str:
        """``key`` reduced to the characters a discovery topic allows."""
        return _object_id(self.key)

    @property
    def value_template(self) -> str:
        """The Jinja template that picks ``key`` out of the JSON payload."""
        return f"{{{{ {_value_expression(self.key)} }}}}"

    def fields(self) -> dict[str, Any]:
        """The entity's own discovery keys (beyond topics, device and availability)."""
        out: dict[str, Any] = {}
        for key, attr in self.ARGUMENTS.items():
            if (value := getattr(self, attr)) is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        out.update(self.extra or {})
        return out

    @classmethod
    def suggest(cls, option: str) -> str | None:
        """What to write instead of an unknown ``option`` that is a Home Assistant discovery
        key (``unit_of_measurement`` -> ``unit``), or ``None``."""
        return _suggest(cls, option)


@dataclass(frozen=True, slots=True)
class HaBinarySensor:
    """One Home Assistant ``binary_sensor`` (on/off) read from a key of the JSON state payload.

    The state is ``payload_on`` when the key's value is true (a non-zero number, ``true``)
    and ``payload_off`` otherwise: the ``value_template`` is
    ``{{ 'ON' if value_json.<key> else 'OFF' }}``. ``device_class`` is one of Home
    Assistant's binary sensor classes (``problem`` for an inverter fault, ``running``,
    ``connectivity``, ...); ``expire_after``, ``off_delay`` (s), ``entity_category``,
    ``icon`` and ``extra`` are as for :class:`HaSensor`.
    """

    key: str
    name: str
    device_class: str | None = None
    payload_on: str = "ON"
    payload_off: str = "OFF"
    icon: str | None = None
    expire_after: int | None = None
    off_delay: int | None = None
    entity_category: str | None = None
    extra: Mapping[str, Any] | None = field(default=None, hash=False)

    component: ClassVar[str] = "binary_sensor"
    """The Home Assistant platform (the discovery topic's component level)."""
    ARGUMENTS: ClassVar[Mapping[str, str]] = {
        "device_class": "device_class", "payload_on": "payload_on",
        "payload_off": "payload_off", "icon": "icon", "expire_after": "expire_after",
        "off_delay": "off_delay", "entity_category": "entity_category",
    }
    """Home Assistant's discovery key -> this class's argument."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        _refuse_ha_names(cls, kwargs)
        return object.__new__(cls)

    def __post_init__(self) -> None:
        owner = "HaBinarySensor"
        _check_text(owner, "key", self.key)
        _check_text(owner, "name", self.name)
        object.__setattr__(self, "device_class", _choice(
            owner, "device_class", self.device_class, ha.BINARY_SENSOR_DEVICE_CLASSES,
            "binary sensor device class", _BINARY_CLASS_ALIASES))
        _check_text(owner, "payload_on", self.payload_on)
        _check_text(owner, "payload_off", self.payload_off)
        if self.payload_on == self.payload_off:
            check.conflict("payload_off", self.payload_off, "payload_on",
                           "the two states need different payloads")
        for payload in ("payload_on", "payload_off"):
            if "'" in getattr(self, payload) or "\\" in getattr(self, payload):
                check.fail(payload, getattr(self, payload), "must not hold ' or \\ (it is "
                           "written into the value template)", subject=f"{owner} {payload}")
        _check_icon(owner, self.icon)
        object.__setattr__(self, "entity_category", _check_category(owner,
                                                                    self.entity_category))
        _non_negative_int(owner, "expire_after", self.expire_after)
        _non_negative_int(owner, "off_delay", self.off_delay)
        object.__setattr__(self, "extra", _check_extra(owner, self.extra,
                                                       ha.BINARY_SENSOR_KEYS, self.ARGUMENTS))

    @property
    def object_id(self) -> str:
        """``key`` reduced to the characters a discovery topic allows."""
        return _object_id(self.key)

    @property
    def value_template(self) -> str:
        """The Jinja template that turns the key's value into ``payload_on`` / ``_off``."""
        return (f"{{{{ '{self.payload_on}' if {_value_expression(self.key)} "
                f"else '{self.payload_off}' }}}}")

    def fields(self) -> dict[str, Any]:
        """The entity's own discovery keys (beyond topics, device and availability)."""
        out = {key: value for key, attr in self.ARGUMENTS.items()
               if (value := getattr(self, attr)) is not None}
        out.update(self.extra or {})
        return out

    @classmethod
    def suggest(cls, option: str) -> str | None:
        """What to write instead of an unknown ``option`` that is a Home Assistant discovery
        key, or ``None``."""
        return _suggest(cls, option)


def _refuse_ha_names(cls: type[HaSensor] | type[HaBinarySensor],
                     kwargs: Mapping[str, Any]) -> None:
    """A keyword argument that is Home Assistant's name for an argument (or a discovery key
    without one) gets a :class:`SettingError` saying what to write instead (Python's own
    ``TypeError`` would only say "unexpected keyword argument")."""
    for key, value in kwargs.items():
        if key not in cls.__dataclass_fields__ and (hint := _suggest(cls, key)) is not None:
            check.fail(key, value, f"is not an argument of {cls.__name__}: {hint}",
                       subject=f"{cls.__name__} {key}")


def _suggest(cls: type[HaSensor] | type[HaBinarySensor], option: str) -> str | None:
    long = ha.ABBREVIATIONS.get(option, option)
    keys = ha.SENSOR_KEYS if cls is HaSensor else ha.BINARY_SENSOR_KEYS
    abbreviation = f" (Home Assistant's abbreviation of {long!r})" if long != option else ""
    if long in cls.ARGUMENTS:
        return (f"{option!r}{abbreviation} is Home Assistant's name; {cls.__name__} calls it "
                f"{cls.ARGUMENTS[long]!r}")
    if long in _SET_BY_CONSUMER:
        return f"{option!r}{abbreviation} is set by the consumer"
    if long in keys:
        return (f"{option!r}{abbreviation} is a Home Assistant discovery key without an "
                f"argument of its own: pass it in extra (extra={{{long!r}: ...}}; in TOML "
                f"extra = {{ {long} = ... }})")
    return None


Entity = HaSensor | HaBinarySensor

for _kind in (HaSensor, HaBinarySensor):
    # __new__ (the Home Assistant hints) takes **kwargs; the signature tools and the config
    # loader show (and check against) the real arguments, those of __init__
    _init = inspect.signature(_kind.__init__)
    setattr(_kind, "__signature__",  # noqa: B010 - not a declared attribute of a type
            _init.replace(parameters=list(_init.parameters.values())[1:]))


# -- the device ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HaDiscovery:
    """Announce the consumer's entities to Home Assistant (MQTT discovery), as one device.

    On every connect the consumer publishes, retained, one config per entity under
    ``<prefix>/<component>/<node_id>/<object_id>/config`` (component ``sensor`` or
    ``binary_sensor``); the entities then appear in Home Assistant without any YAML.
    ``node_id`` identifies the device (letters, digits, ``_`` and ``-``); ``device_name``,
    ``manufacturer``, ``model`` and ``sw_version`` describe it. ``sensors`` are
    :class:`HaSensor`, ``binary_sensors`` :class:`HaBinarySensor` (at least one entity in
    all).
    """

    node_id: str
    device_name: str
    sensors: Sequence[HaSensor] = ()
    manufacturer: str | None = None
    model: str | None = None
    sw_version: str | None = None
    prefix: str = "homeassistant"
    binary_sensors: Sequence[HaBinarySensor] = ()

    def __post_init__(self) -> None:
        _check_text("HaDiscovery", "node_id", self.node_id)
        if not _NODE_ID.fullmatch(self.node_id):
            check.fail("node_id", self.node_id, "may only use letters, digits, '_' and "
                       f"'-', got {self.node_id!r}", subject="HaDiscovery node_id")
        _check_text("HaDiscovery", "device_name", self.device_name)
        for attr in ("manufacturer", "model", "sw_version"):
            _check_text("HaDiscovery", attr, getattr(self, attr), optional=True)
        _check_text("HaDiscovery", "prefix", self.prefix)
        _check_prefix(self.prefix)
        seen: set[str] = set()
        for attr, kind in (("sensors", HaSensor), ("binary_sensors", HaBinarySensor)):
            entities = getattr(self, attr)
            if isinstance(entities, str | bytes) or not isinstance(entities, Sequence):
                check.fail(attr, entities, f"must be a list of {kind.__name__}, got "
                           f"{entities!r}", subject=f"HaDiscovery {attr}")
            for i, entity in enumerate(entities):
                if not isinstance(entity, kind):
                    check.fail(f"{attr}[{i}]", entity, f"must be a {kind.__name__}, got "
                               f"{entity!r}", subject=f"HaDiscovery {attr}[{i}]")
                if entity.object_id in seen:  # the unique_id is node_id + object id
                    check.fail(f"{attr}[{i}].key", entity.key,
                               f"repeats object id {entity.object_id!r}, got {entity.key!r}",
                               subject=f"HaDiscovery {attr}[{i}].key")
                seen.add(entity.object_id)
            object.__setattr__(self, attr, tuple(entities))
        if not seen:
            check.fail("sensors", self.sensors, "must not be empty (with no binary_sensors "
                       f"either), got {self.sensors!r}", subject="HaDiscovery sensors")

    @property
    def entities(self) -> tuple[Entity, ...]:
        """``sensors`` and ``binary_sensors``, in that order."""
        return (*self.sensors, *self.binary_sensors)

    def config_topic(self, entity: Entity) -> str:
        """Where the retained config of ``entity`` is published."""
        return f"{self.prefix}/{entity.component}/{self.node_id}/{entity.object_id}/config"

    def config_topics(self) -> list[str]:
        """The config topic of every entity (what clearing the device empties)."""
        return [self.config_topic(e) for e in self.entities]

    def config(
        self, entity: Entity, *, state_topic: str, availability_topic: str | None, qos: int,
        device_availability_topic: str | None = None,
    ) -> dict[str, Any]:
        """The discovery config of ``entity`` (a JSON object). With
        ``device_availability_topic`` the entity is available while both that topic and
        ``availability_topic`` (the bridge's) say ``"online"``."""
        device: dict[str, Any] = {"identifiers": [self.node_id], "name": self.device_name}
        for attr in ("manufacturer", "model", "sw_version"):
            if (value := getattr(self, attr)) is not None:
                device[attr] = value
        config: dict[str, Any] = {
            "name": entity.name,
            "unique_id": f"{self.node_id}_{entity.object_id}",
            "state_topic": state_topic,
            "value_template": entity.value_template,
            "device": device,
            "origin": {"name": "aioconveyor", "sw_version": __version__},
            "qos": qos,
        }
        if device_availability_topic is not None:
            config["availability"] = [
                {"topic": topic, "payload_available": ONLINE, "payload_not_available": OFFLINE}
                for topic in (availability_topic, device_availability_topic)
                if topic is not None
            ]
            config["availability_mode"] = "all"
        elif availability_topic is not None:
            config["availability_topic"] = availability_topic
            config["payload_available"] = ONLINE
            config["payload_not_available"] = OFFLINE
        config.update(entity.fields())
        return config


def _check_prefix(prefix: str) -> None:
    for bad in ("+", "#", "\0"):
        if bad in prefix:
            check.fail("prefix", prefix, "must be a topic without wildcards ('+', '#') or "
                       f"NUL characters, got {prefix!r}", subject="HaDiscovery prefix")
