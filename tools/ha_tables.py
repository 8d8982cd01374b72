"""Write ``consumers/_ha_tables.py`` from a Home Assistant release (its wheel from PyPI).

    pip download homeassistant==2026.11.0 --no-deps --python-version 3.14.2 \\
        --only-binary=:all: -d /tmp/ha
    python tools/ha_tables.py /tmp/ha/homeassistant-2026.11.0-py3-none-any.whl \\
        > consumers/_ha_tables.py

Home Assistant is never imported (it needs Python 3.14 and hundreds of packages): the
source files are read from the wheel and the few constructs the tables use (string
constants, ``StrEnum`` classes, f-strings, ``set(UnitOfX)``, ``{*A, *B}``, dicts, and the
``Optional(CONF_X)`` keys of the MQTT discovery schemas) are evaluated from their syntax
tree. The output is plain Python literals.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import zipfile
from typing import Any

CONST = "homeassistant/const.py"
SENSOR = "homeassistant/components/sensor/const.py"
BINARY = "homeassistant/components/binary_sensor/const.py"
ABBREVIATIONS = "homeassistant/components/mqtt/abbreviations.py"
MQTT_CONST = "homeassistant/components/mqtt/const.py"
MQTT_CONFIG = "homeassistant/components/mqtt/config.py"
MQTT_SCHEMAS = "homeassistant/components/mqtt/schemas.py"
MQTT_SENSOR = "homeassistant/components/mqtt/sensor.py"
MQTT_BINARY = "homeassistant/components/mqtt/binary_sensor.py"


class Enum(dict[str, str]):
    """A ``StrEnum`` class: member name -> value (iterating gives the values)."""

    def __iter__(self) -> Any:
        return iter(self.values())


class Evaluator:
    def __init__(self) -> None:
        self.env: dict[str, Any] = {}

    def value(self, node: ast.expr) -> Any:
        match node:
            case ast.Constant(value=v):
                return v
            case ast.JoinedStr(values=parts):
                return "".join(str(self.value(p)) for p in parts)
            case ast.FormattedValue(value=v):
                return str(self.value(v))
            case ast.Name(id=name):
                return self.env[name]
            case ast.Attribute(value=owner, attr="value"):
                return self.value(owner)
            case ast.Attribute(value=owner, attr=attr):
                return self.value(owner)[attr]
            case ast.Call(func=ast.Name(id="set"), args=[]):
                return set()
            case ast.Call(func=ast.Name(id="set"), args=[arg]):
                return set(self.value(arg))
            case ast.Set(elts=elts):
                out: set[Any] = set()
                for e in elts:
                    if isinstance(e, ast.Starred):
                        out |= set(self.value(e.value))
                    else:
                        out.add(self.value(e))
                return out
            case ast.Dict(keys=keys, values=values):
                return {self.value(k): self.value(v)  # type: ignore[arg-type]
                        for k, v in zip(keys, values, strict=True)}
            case ast.List(elts=elts) | ast.Tuple(elts=elts):
                return [self.value(e) for e in elts]
        raise ValueError(ast.dump(node))

    def module(self, source: str) -> None:
        """Evaluate every top-level constant and StrEnum class it can."""
        for stmt in ast.parse(source).body:
            if isinstance(stmt, ast.ClassDef):
                members = Enum()
                for item in stmt.body:
                    if (isinstance(item, ast.Assign) and len(item.targets) == 1
                            and isinstance(item.targets[0], ast.Name)):
                        try:
                            members[item.targets[0].id] = self.value(item.value)
                        except (KeyError, ValueError, TypeError):
                            pass
                self.env[stmt.name] = members
                continue
            target, value = _assignment(stmt)
            if target is None or value is None:
                continue
            try:
                self.env[target] = self.value(value)
            except (KeyError, ValueError, TypeError):
                pass


def _assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(
            stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return stmt.target.id, stmt.value
    return None, None


def schema_keys(source: str, names: set[str], env: dict[str, Any]) -> dict[str, set[str]]:
    """The top-level keys (``Optional(CONF_X)``, ``Required``, ``Exclusive``) of the dict
    literals that the top-level assignments ``names`` pass to ``Schema(...)`` /
    ``.extend(...)`` (or assign directly); nested schemas (a list of availability
    entries, the device) are not descended into."""
    out: dict[str, set[str]] = {}
    for stmt in ast.parse(source).body:
        target, value = _assignment(stmt)
        if target not in names or value is None:
            continue
        keys: set[str] = set()
        for d in _schema_dicts(value):
            for k in d.keys:
                if (isinstance(k, ast.Call) and isinstance(k.func, ast.Attribute)
                        and k.func.attr in ("Optional", "Required", "Exclusive") and k.args):
                    arg = k.args[0]
                    keys.add(env[arg.id] if isinstance(arg, ast.Name) else ast.literal_eval(arg))
        out[target] = keys
    return out


def _schema_dicts(node: ast.expr) -> list[ast.Dict]:
    if isinstance(node, ast.Dict):
        return [node]
    found: list[ast.Dict] = []
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("Schema", "extend"):
            found += [a for a in node.args if isinstance(a, ast.Dict)]
            found += _schema_dicts(func.value) if func.attr == "extend" else []
        if isinstance(func, ast.Attribute) and func.attr == "All":
            for a in node.args:
                found += _schema_dicts(a)
    return found


def fmt(value: Any, indent: int = 4) -> str:
    """Deterministic, line-wrapped literals."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = "".join(f"{pad}{k!r}: {fmt(v, indent + 4)},\n" for k, v in value.items())
        return "{\n" + items + " " * (indent - 4) + "}"
    if isinstance(value, frozenset | set):
        if not value:
            return "frozenset()"
        ordered = sorted(value, key=lambda v: (v is not None, v or ""))
        body = ", ".join(repr(v) for v in ordered)
        if len(body) + indent < 64:
            return f"frozenset({{{body}}})"
        return "frozenset({" + _wrapped(ordered, indent)[1:-1] + "})"
    if isinstance(value, tuple):
        return _wrapped(list(value), indent)
    return repr(value)


def _wrapped(values: list[Any], indent: int) -> str:
    """``(\n    a, b, c,\n)`` with lines of at most 96 characters."""
    pad = " " * indent
    lines, line = [], pad
    for v in values:
        piece = f"{v!r}, "
        if len(line) + len(piece) > 96:
            lines.append(line.rstrip())
            line = pad
        line += piece
    lines.append(line.rstrip())
    return "(\n" + "\n".join(lines) + "\n" + " " * (indent - 4) + ")"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        read = {name: zf.read(name).decode("utf-8") for name in (
            CONST, SENSOR, BINARY, ABBREVIATIONS, MQTT_CONST, MQTT_CONFIG, MQTT_SCHEMAS,
            MQTT_SENSOR, MQTT_BINARY)}
        version = re.search(r"homeassistant-([^-]+)-", wheel)
    ha = Evaluator()
    for name in (CONST, SENSOR, BINARY, ABBREVIATIONS, MQTT_CONST):
        ha.module(read[name])
    env = ha.env
    sensor_classes = tuple(env["SensorDeviceClass"].values())
    state_classes = tuple(env["SensorStateClass"].values())
    units = {str(k): frozenset(v) for k, v in env["DEVICE_CLASS_UNITS"].items()}
    state_units = {str(k): frozenset(v) for k, v in env["STATE_CLASS_UNITS"].items()}
    allowed_states = {str(k): frozenset(v) for k, v in env["DEVICE_CLASS_STATE_CLASSES"].items()}

    # the keys of each platform's discovery schema (HA drops any other key silently)
    mqtt = Evaluator()
    mqtt.env = dict(env)
    for name in (MQTT_CONFIG, MQTT_SCHEMAS, MQTT_SENSOR, MQTT_BINARY):
        mqtt.module(read[name])  # CONF_EXPIRE_AFTER etc. defined locally
    keys = {**schema_keys(read[MQTT_CONFIG], {"SCHEMA_BASE", "MQTT_RO_SCHEMA"}, mqtt.env),
            **schema_keys(read[MQTT_SCHEMAS], {
                "_MQTT_AVAILABILITY_SINGLE_SCHEMA", "_MQTT_AVAILABILITY_LIST_SCHEMA",
                "MQTT_ENTITY_COMMON_SCHEMA", "_MQTT_DEVICE_INFO_SCHEMA_BASE",
                "MQTT_ORIGIN_INFO_SCHEMA"}, mqtt.env),
            **schema_keys(read[MQTT_SENSOR], {"_PLATFORM_SCHEMA_BASE"}, mqtt.env),
            **schema_keys(read[MQTT_BINARY], {"PLATFORM_SCHEMA_MODERN"}, mqtt.env)}
    common = (keys["SCHEMA_BASE"] | keys["MQTT_RO_SCHEMA"]
              | keys["_MQTT_AVAILABILITY_SINGLE_SCHEMA"] | keys["_MQTT_AVAILABILITY_LIST_SCHEMA"]
              | keys["MQTT_ENTITY_COMMON_SCHEMA"])
    device_keys = keys["_MQTT_DEVICE_INFO_SCHEMA_BASE"] | {"child_device"}

    release = version.group(1) if version else "?"
    out = [f'''"""Home Assistant's own tables for MQTT discovery, as plain data (no HA dependency).

Generated by ``tools/ha_tables.py`` from Home Assistant {release} (the ``homeassistant``
wheel on PyPI; the same files as tag {release} of github.com/home-assistant/core):

* ``{CONST}``: the ``UnitOf*`` enums that give the unit strings,
  ``EntityCategory``;
* ``{SENSOR}``: ``SensorDeviceClass``, ``SensorStateClass``,
  ``NON_NUMERIC_DEVICE_CLASSES``, ``DEVICE_CLASS_UNITS``, ``DEVICE_CLASS_STATE_CLASSES``,
  ``STATE_CLASS_UNITS``, ``AMBIGUOUS_UNITS``;
* ``{BINARY}``: ``BinarySensorDeviceClass`` (what
  ``binary_sensor/__init__.py`` exports);
* ``{ABBREVIATIONS}``: ``ABBREVIATIONS``, ``DEVICE_ABBREVIATIONS``,
  ``ORIGIN_ABBREVIATIONS``;
* ``homeassistant/components/mqtt/{{config,schemas,sensor,binary_sensor}}.py``: the keys the
  sensor and binary_sensor discovery schemas accept (Home Assistant drops any other key).

Do not edit by hand; regenerate it (see the script's docstring) for a newer release.
"""

from __future__ import annotations

HA_VERSION = {release!r}
"""The Home Assistant release these tables were read from."""
''']
    tables: list[tuple[str, str, Any, str]] = [
        ("SENSOR_DEVICE_CLASSES", "tuple[str, ...]", sensor_classes,
         "``SensorDeviceClass`` values."),
        ("NON_NUMERIC_DEVICE_CLASSES", "frozenset[str]",
         frozenset(env["NON_NUMERIC_DEVICE_CLASSES"]),
         "Device classes whose state is not a number (no unit, no state class)."),
        ("STATE_CLASSES", "tuple[str, ...]", state_classes, "``SensorStateClass`` values."),
        ("DEVICE_CLASS_UNITS", "dict[str, frozenset[str | None]]", units,
         "The units a device class allows (``None``: no unit); a device class missing here "
         "(``monetary``: a currency code) allows any unit."),
        ("DEVICE_CLASS_STATE_CLASSES", "dict[str, frozenset[str]]", allowed_states,
         "The state classes a device class allows (empty: none)."),
        ("STATE_CLASS_UNITS", "dict[str, frozenset[str | None]]", state_units,
         "The units a state class allows, where it restricts them."),
        ("AMBIGUOUS_UNITS", "dict[str, str]", {str(k): v for k, v in
                                               env["AMBIGUOUS_UNITS"].items()},
         "Unit spellings Home Assistant rewrites before checking them (legacy micro sign)."),
        ("BINARY_SENSOR_DEVICE_CLASSES", "tuple[str, ...]",
         tuple(env["BinarySensorDeviceClass"].values()), "``BinarySensorDeviceClass`` values."),
        ("ENTITY_CATEGORIES", "tuple[str, ...]", tuple(env["EntityCategory"].values()),
         "``EntityCategory`` values (sensors and binary sensors refuse ``config``)."),
        ("ABBREVIATIONS", "dict[str, str]", env["ABBREVIATIONS"],
         "Discovery payload abbreviation -> key (also inside ``availability`` entries)."),
        ("DEVICE_ABBREVIATIONS", "dict[str, str]", env["DEVICE_ABBREVIATIONS"],
         "Abbreviations inside ``device``."),
        ("ORIGIN_ABBREVIATIONS", "dict[str, str]", env["ORIGIN_ABBREVIATIONS"],
         "Abbreviations inside ``origin``."),
        ("SENSOR_KEYS", "frozenset[str]", frozenset(common | keys["_PLATFORM_SCHEMA_BASE"]),
         "The keys of a sensor's discovery config."),
        ("BINARY_SENSOR_KEYS", "frozenset[str]",
         frozenset(common | keys["PLATFORM_SCHEMA_MODERN"]),
         "The keys of a binary_sensor's discovery config."),
        ("DEVICE_KEYS", "frozenset[str]", frozenset(device_keys), "The keys of ``device``."),
        ("ORIGIN_KEYS", "frozenset[str]", frozenset(keys["MQTT_ORIGIN_INFO_SCHEMA"]),
         "The keys of ``origin``."),
    ]
    for name, annotation, value, doc in tables:
        text = "\n".join(textwrap.wrap(doc, 92))
        out.append(f"{name}: {annotation} = {fmt(value)}\n\"\"\"{text}\"\"\"\n")
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
