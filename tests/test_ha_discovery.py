"""Home Assistant discovery checked the way Home Assistant checks it (issue 15).

Against the real Mosquitto: subscribe to ``homeassistant/#`` as Home Assistant does, take
the retained configs, expand the abbreviations with its table, validate every entity
against its tables (device class, state class, the units each device class allows, enum
options, the platform's keys), and render every ``value_template`` with jinja2 against the
state payloads the conveyor really published: numbers for numeric sensors, ON/OFF for
binary sensors, one of the options for an enum. For the demo and for a three-device config
file. Then clearing: ``MqttConsumer.clear_discovery`` and ``aioconveyor ha-clear`` leave no
retained config behind. Bad input is refused with Home Assistant's spellings as hints.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from aioconveyor import SettingError
from aioconveyor._cli import main
from aioconveyor._config import ConfigError, load_config
from aioconveyor.consumers import _ha_tables as ha
from aioconveyor.consumers.mqtt import HaBinarySensor, HaDiscovery, HaSensor, MqttConsumer
from support.homeassistant import (
    Discovered,
    discover,
    expand,
    problems,
    render,
    state_problems,
)
from support.services import host_port


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_config puts the config's folder on sys.path; keep that within each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


async def collect(url: str, topic_filter: str, until: Any, subscribed: asyncio.Event,
                  timeout: float = 30) -> list[tuple[str, bytes]]:
    """Messages under ``topic_filter`` until ``until(messages)`` holds; ``subscribed`` is
    set once the broker has the subscription."""
    host, port = host_port(url, 1883)
    got: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topic_filter, qos=1)
        subscribed.set()
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append((str(message.topic), message.payload))
                if until(got):
                    return got
    raise AssertionError("unreachable")


def assert_home_assistant_accepts(entities: dict[str, Discovered],
                                  states: dict[str, list[bytes]]) -> None:
    """Every entity passes Home Assistant's checks, and its template renders each state
    payload of its state topic into a state Home Assistant takes."""
    assert entities, "nothing discovered"
    for topic, entity in entities.items():
        assert problems(entity) == [], topic
        payloads = states[entity.config["state_topic"]]
        assert payloads, f"no state published for {topic}"
        for payload in payloads:
            state = render(entity.config["value_template"], payload)
            assert state_problems(entity, state) == [], (topic, payload, state)


# -- the checker itself -----------------------------------------------------------------


def test_the_checker_refuses_what_home_assistant_refuses() -> None:
    def entity(component: str = "sensor", **config: Any) -> Discovered:
        base = {"stat_t": "t", "val_tpl": "{{ value_json.x }}"}  # abbreviated, as HA allows
        return Discovered("x", component, "n", "o", expand({**base, **config}))

    assert problems(entity(dev_cla="energy", unit_of_meas="kWh", stat_cla="total")) == []
    assert problems(entity(stat_cla="total-increasing")) == ["state_class 'total-increasing'"]
    assert problems(entity(dev_cla="volts")) == ["sensor device_class 'volts'"]
    assert problems(entity(dev_cla="energy", unit_of_meas="W")) == [
        "unit 'W' is not one of device class 'energy''s units"]
    assert problems(entity(dev_cla="energy", unit_of_meas="kWh", stat_cla="measurement")) == [
        "state_class 'measurement' is impossible for device class 'energy' (expected "
        "['total', 'total_increasing'])"]
    assert problems(entity(ops=["a"])) == ["options need device_class 'enum', got None"]
    assert problems(entity("binary_sensor", unit_of_meas="W")) == [
        "keys the binary_sensor schema drops: ['unit_of_measurement']"]
    assert problems(entity(ent_cat="config")) == [
        "entity_category 'config' (sensors take 'diagnostic' only)"]
    energy = entity(dev_cla="energy", unit_of_meas="kWh")
    assert state_problems(energy, render("{{ value_json.x }}", b'{"x": 1.5}')) == []
    assert state_problems(energy, render("{{ value_json.x }}", b'{"x": "n/a"}')) == [
        "'n/a' is not a number"]


# -- the demo --------------------------------------------------------------------------


async def test_the_demo_announces_entities_home_assistant_accepts(tmp_path: Path,
                                                                  mqtt_url: str) -> None:
    device = f"test-{uuid.uuid4().hex[:8]}"
    node = f"aioconveyor_{device}"
    state_topic = f"aioconveyor/_demo/{device}/state"
    subscribed = asyncio.Event()
    processes: list[asyncio.subprocess.Process] = []

    async def run_demo() -> bytes:
        await subscribed.wait()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aioconveyor", "--count", "3", "--interval", "0.2",
            "--quiet", "--csv", str(tmp_path / "m.csv"), "--mqtt", mqtt_url, "--ha-discovery",
            "--device", device, "--speed", "720", cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        processes.append(process)
        _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        return stderr

    try:
        messages, _ = await asyncio.wait_for(asyncio.gather(collect(
            mqtt_url, f"aioconveyor/_demo/{device}/#",
            lambda got: sum(t == state_topic for t, _ in got) >= 3, subscribed), run_demo()), 60)
        entities = await discover(mqtt_url, node_ids={node})
        states = {state_topic: [p for t, p in messages if t == state_topic]}
        assert {e.object_id for e in entities.values()} == {
            "power_w", "energy_kwh", "grid_voltage_v", "grid_frequency_hz", "temperature_c",
            "state"}
        assert_home_assistant_accepts(entities, states)
        state = entities[f"homeassistant/sensor/{node}/state/config"].config
        assert state["device_class"] == "enum" and state["options"] == ["producing", "sleeping"]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        host, port = host_port(mqtt_url, 1883)
        async with aiomqtt.Client(host, port) as client:  # the demo has no config file
            for entity in (await discover(mqtt_url, node_ids={node})).values():
                await client.publish(entity.topic, b"", qos=1, retain=True)
            await client.publish(f"aioconveyor/_demo/{device}/availability", b"", qos=1,
                                 retain=True)
    assert await discover(mqtt_url, node_ids={node}) == {}


# -- three devices from a config file -----------------------------------------------------

DEVICES = """
    counts = {}

    def inverter(event_time):
        n = counts["inverter"] = counts.get("inverter", 0) + 1
        return {"power_w": 1000.5 + n, "energy_kwh": 12.25 + n / 10, "fault": n % 2 == 0,
                "state": "producing" if n % 3 else "sleeping", "fault_code": n}

    def meter(event_time):
        n = counts["meter"] = counts.get("meter", 0) + 1
        return {"import_w": 230 * n, "energy_kwh": 5000 + n, "online": 1}

    def weather(event_time):
        n = counts["weather"] = counts.get("weather", 0) + 1
        return {"temperature-c": 20.5 + n, "humidity": 40 + n, "wind": n * 1.5}
"""


def three_devices(module: str, base: str, tag: str) -> str:
    """Three producers, a Home Assistant device each, every entity kind and field."""
    return textwrap.dedent(f"""
        [[producers]]
        name = "inverter"
        function = "{module}:inverter"
        every = 0.1
        max_ticks = 4

        [[producers]]
        name = "meter"
        function = "{module}:meter"
        every = 0.1
        max_ticks = 3

        [[producers]]
        name = "weather"
        function = "{module}:weather"
        every = 0.1
        max_ticks = 3

        [[consumers]]
        type = "mqtt"
        name = "ha"
        url = "${{MQTT_URL}}"
        topic = "{base}/{{producer}}/state"

        [consumers.discovery.inverter]
        node_id = "inverter_{tag}"
        device_name = "Inverter"
        manufacturer = "ACME"
        sensors = [
            {{ key = "power_w", name = "Power", unit = "W", device_class = "power", state_class = "measurement", suggested_display_precision = 0 }},
            {{ key = "energy_kwh", name = "Energy", unit = "kWh", device_class = "energy", state_class = "total_increasing", expire_after = 600 }},
            {{ key = "state", name = "State", device_class = "enum", options = ["producing", "sleeping"], icon = "mdi:solar-power" }},
            {{ key = "fault_code", name = "Fault code", entity_category = "diagnostic", extra = {{ force_update = true }} }},
        ]
        binary_sensors = [
            {{ key = "fault", name = "Fault", device_class = "problem", entity_category = "diagnostic" }},
        ]

        [consumers.discovery.meter]
        node_id = "meter_{tag}"
        device_name = "Meter"
        sensors = [
            {{ key = "import_w", name = "Import", unit = "kW", device_class = "power" }},
            {{ key = "energy_kwh", name = "Energy", unit = "kWh", device_class = "energy", state_class = "total" }},
        ]
        binary_sensors = [
            {{ key = "online", name = "Online", device_class = "connectivity", payload_on = "yes", payload_off = "no", off_delay = 30 }},
        ]

        [consumers.discovery.weather]
        node_id = "weather_{tag}"
        device_name = "Weather"
        sensors = [
            {{ key = "temperature-c", name = "Temperature", unit = "°C", device_class = "temperature", state_class = "measurement" }},
            {{ key = "humidity", name = "Humidity", unit = "%", device_class = "humidity" }},
            {{ key = "wind", name = "Wind", unit = "m/s", device_class = "wind_speed" }},
        ]
        """)


@pytest.fixture
async def config_file(tmp_path: Path, mqtt_url: str) -> AsyncIterator[tuple[Path, str, str]]:
    """The three-device config (its module next to it), its topic base and its node tag;
    whatever it left retained is cleared afterwards."""
    tag = uuid.uuid4().hex[:8]
    module = f"ha_devices_{tag}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(DEVICES))
    base = f"aioconveyor-test/{tag}"
    path = tmp_path / "home.toml"
    path.write_text(three_devices(module, base, tag))
    yield path, base, tag
    host, port = host_port(mqtt_url, 1883)
    nodes = {f"{kind}_{tag}" for kind in ("inverter", "meter", "weather")}
    async with aiomqtt.Client(host, port) as client:
        for entity in (await discover(mqtt_url, node_ids=nodes)).values():
            await client.publish(entity.topic, b"", qos=1, retain=True)


def nodes(tag: str, *kinds: str) -> set[str]:
    return {f"{kind}_{tag}" for kind in kinds or ("inverter", "meter", "weather")}


async def test_three_devices_from_a_config_file_pass_home_assistants_checks(
        config_file: tuple[Path, str, str], mqtt_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path, base, tag = config_file
    monkeypatch.setenv("MQTT_URL", mqtt_url)
    loaded = load_config(path)
    expected = {"inverter": 4, "meter": 3, "weather": 3}

    def done(got: list[tuple[str, bytes]]) -> bool:
        return all(sum(t == f"{base}/{p}/state" for t, _ in got) >= n
                   for p, n in expected.items())

    subscribed = asyncio.Event()
    watching = asyncio.ensure_future(collect(mqtt_url, f"{base}/#", done, subscribed))
    await asyncio.wait_for(subscribed.wait(), 10)
    async with loaded.conveyor as conv:
        messages = await asyncio.wait_for(watching, 30)
        assert await asyncio.to_thread(conv.join, 20)
    states = {f"{base}/{p}/state": [m for t, m in messages if t == f"{base}/{p}/state"]
              for p in expected}

    entities = await discover(mqtt_url, node_ids=nodes(tag))
    assert sorted(entities) == sorted([
        *(f"homeassistant/sensor/inverter_{tag}/{o}/config"
          for o in ("power_w", "energy_kwh", "state", "fault_code")),
        f"homeassistant/binary_sensor/inverter_{tag}/fault/config",
        *(f"homeassistant/sensor/meter_{tag}/{o}/config" for o in ("import_w", "energy_kwh")),
        f"homeassistant/binary_sensor/meter_{tag}/online/config",
        *(f"homeassistant/sensor/weather_{tag}/{o}/config"
          for o in ("temperature-c", "humidity", "wind")),
    ])
    assert_home_assistant_accepts(entities, states)

    # each device has its own availability next to the bridge's, and its own identifiers
    for entity in entities.values():
        producer = entity.config["state_topic"].split("/")[-2]
        assert [a["topic"] for a in entity.config["availability"]] == [
            f"{base}/availability", f"{base}/{producer}/availability"]
        assert entity.config["availability_mode"] == "all"
        assert entity.config["device"]["identifiers"] == [entity.node_id]
    fault = entities[f"homeassistant/binary_sensor/inverter_{tag}/fault/config"].config
    assert [render(fault["value_template"], p) for p in states[f"{base}/inverter/state"]] == [
        "OFF", "ON", "OFF", "ON"]
    online = entities[f"homeassistant/binary_sensor/meter_{tag}/online/config"].config
    assert (online["payload_on"], online["off_delay"]) == ("yes", 30)
    code = entities[f"homeassistant/sensor/inverter_{tag}/fault_code/config"].config
    assert code["force_update"] is True and code["entity_category"] == "diagnostic"
    energy = entities[f"homeassistant/sensor/inverter_{tag}/energy_kwh/config"].config
    assert energy["expire_after"] == 600
    weather = entities[f"homeassistant/sensor/weather_{tag}/temperature-c/config"].config
    assert weather["value_template"] == '{{ value_json["temperature-c"] }}'


# -- removing what was announced ---------------------------------------------------------


async def test_ha_clear_removes_one_device_then_every_device(
        config_file: tuple[Path, str, str], mqtt_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path, base, tag = config_file
    monkeypatch.setenv("MQTT_URL", mqtt_url)
    consumer = load_config(path).specs["ha"].fn
    async with consumer:  # announces the three devices (retained), then goes offline
        pass
    assert len(await discover(mqtt_url, node_ids=nodes(tag))) == 11

    assert await asyncio.to_thread(main, ["ha-clear", str(path), "--producer", "meter"]) == 0
    out = capsys.readouterr().out
    assert "consumer ha: cleared 4 retained topic(s)" in out
    assert f"  homeassistant/binary_sensor/meter_{tag}/online/config" in out
    assert f"  {base}/meter/availability" in out
    left = await discover(mqtt_url, node_ids=nodes(tag))
    assert {e.node_id for e in left.values()} == nodes(tag, "inverter", "weather")

    assert await asyncio.to_thread(main, ["ha-clear", str(path)]) == 0
    assert "cleared 15 retained topic(s)" in capsys.readouterr().out  # 11 + 3 + bridge
    assert await discover(mqtt_url, node_ids=nodes(tag)) == {}
    leftovers = await collect_retained(mqtt_url, f"{base}/#")
    assert leftovers == {}, "availability topics are cleared too"


async def collect_retained(url: str, topic_filter: str) -> dict[str, bytes]:
    host, port = host_port(url, 1883)
    sentinel = f"aioconveyor-test/sentinel/{uuid.uuid4().hex[:8]}"
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topic_filter, qos=1)
        await client.subscribe(sentinel, qos=1)
        await client.publish(sentinel, b"done", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                if str(message.topic) == sentinel:
                    return found
                assert isinstance(message.payload, bytes)
                if message.retain and message.payload:
                    found[str(message.topic)] = message.payload
    raise AssertionError("unreachable")


async def test_clear_discovery_needs_no_open_consumer_and_names_a_wrong_producer(
        mqtt_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    device = HaDiscovery(f"single_{tag}", "Single", sensors=[
        HaSensor("power_w", "Power", unit="W", device_class="power")],
        binary_sensors=[HaBinarySensor("fault", "Fault", device_class="problem")])
    topic = f"aioconveyor-test/{tag}/state"
    async with MqttConsumer(mqtt_url, topic=topic, discovery=device):
        pass
    assert len(await discover(mqtt_url, node_ids={f"single_{tag}"})) == 2
    cleaner = MqttConsumer(mqtt_url, topic=topic, discovery=device)  # never opened
    with pytest.raises(SettingError, match="producer has no Home Assistant device in "
                                           "MqttConsumer 'mqtt', got 'meter'"):
        cleaner.discovery_topics("meter")
    assert await cleaner.clear_discovery() == [
        f"homeassistant/sensor/single_{tag}/power_w/config",
        f"homeassistant/binary_sensor/single_{tag}/fault/config",
        f"aioconveyor-test/{tag}/availability"]
    assert await discover(mqtt_url, node_ids={f"single_{tag}"}) == {}
    assert await collect_retained(mqtt_url, f"aioconveyor-test/{tag}/#") == {}


def test_ha_clear_without_a_device_is_a_config_error(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain_mod.py").write_text("def read(event_time):\n    return 1\n")
    path = tmp_path / "c.toml"
    path.write_text('[producer]\nfunction = "plain_mod:read"\n[[consumers]]\ntype = "pretty"\n')
    assert main(["ha-clear", str(path)]) == 2
    assert "no MQTT consumer announces a Home Assistant device" in capsys.readouterr().err


# -- bad input -----------------------------------------------------------------------------

BAD = [
    (HaSensor, {"state_class": "total-increasing"}, "state_class",
     "HaSensor state_class must be a Home Assistant state class, got 'total-increasing' (did "
     "you mean 'total_increasing'?)"),
    (HaSensor, {"device_class": "volts"}, "device_class",
     "HaSensor device_class must be a Home Assistant sensor device class, got 'volts' (did "
     "you mean 'voltage'?)"),
    (HaSensor, {"device_class": "kWh"}, "device_class",
     "HaSensor device_class must be a Home Assistant sensor device class, got 'kWh'; 'kWh' "
     "is a unit (unit='kWh') of device_class 'energy' or 'energy_storage'"),
    (HaSensor, {"device_class": "energy", "unit": "W"}, "unit",
     "HaSensor unit must be 'cal', 'Gcal', 'GJ', 'GWh', 'J', 'kcal', 'kJ', 'kWh', 'Mcal', "
     "'MJ', 'MWh', 'mWh', 'thm', 'TWh', 'Wh' for device_class='energy' (Home Assistant's "
     "units for it), got 'W' (did you mean 'Wh'?); 'W' is a unit of device_class 'power'"),
    (HaSensor, {"device_class": "power", "unit": "kwh"}, "unit",
     "HaSensor unit must be 'GW', 'kW', 'MW', 'mW', 'TW', 'W' for device_class='power' (Home "
     "Assistant's units for it), got 'kwh'; 'kwh' is a unit of device_class 'energy' or "
     "'energy_storage'"),
    (HaSensor, {"device_class": "power"}, "unit",
     "HaSensor unit is required for device_class='power': one of 'GW', 'kW', 'MW', 'mW', "
     "'TW', 'W' (Home Assistant's units for it)"),
    (HaSensor, {"device_class": "energy", "unit": "kWh", "state_class": "measurement"},
     "state_class",
     "HaSensor state_class must be 'total' or 'total_increasing' for device_class='energy', "
     "got 'measurement': Home Assistant keeps no statistics for the pair (and logs a "
     "warning); 'total' is a running total: a meter reading; 'total_increasing' is a counter "
     "that only grows (a meter reading; a drop to 0 starts a new cycle)"),
    (HaSensor, {"device_class": "enum"}, "options",
     "HaSensor options is required with device_class='enum': the list of states the sensor "
     "can be in, like ['producing', 'sleeping']"),
    (HaSensor, {"options": ["on", "off"]}, "options",
     "HaSensor options needs device_class='enum' (Home Assistant accepts options only on an "
     "enum sensor), got device_class=None"),
    (HaSensor, {"device_class": "enum", "options": []}, "options",
     "HaSensor options must not be empty (Home Assistant refuses an empty options list)"),
    (HaSensor, {"device_class": "enum", "options": ["a", "a"]}, "options[1]",
     "HaSensor options[1] repeats 'a'"),
    (HaSensor, {"device_class": "enum", "options": ["a"], "unit": "W"}, "unit",
     "HaSensor unit is for numbers; device_class='enum' is not numeric, so Home Assistant "
     "refuses it (leave unit out)"),
    (HaSensor, {"device_class": "timestamp", "state_class": "measurement"}, "state_class",
     "HaSensor state_class is for numbers; device_class='timestamp' is not numeric, so Home "
     "Assistant refuses it (leave state_class out)"),
    (HaSensor, {"state_class": "measurement_angle", "unit": "rad"}, "unit",
     "HaSensor unit must be '°' with state_class='measurement_angle', got 'rad'"),
    (HaSensor, {"expire_after": -1}, "expire_after",
     "expire_after must be an int >= 0 (seconds), got -1"),
    (HaSensor, {"suggested_display_precision": 1.5}, "suggested_display_precision",
     "suggested_display_precision must be an int >= 0, got 1.5 (float)"),
    (HaSensor, {"entity_category": "config"}, "entity_category",
     "HaSensor entity_category 'config' is for entities that change a device's settings; "
     "Home Assistant refuses it for a sensor or binary sensor: use 'diagnostic' (or leave it "
     "out)"),
    (HaSensor, {"entity_category": "diagnostics"}, "entity_category",
     "HaSensor entity_category must be a Home Assistant entity category, got 'diagnostics' "
     "(did you mean 'diagnostic'?)"),
    (HaSensor, {"icon": "solar-power"}, "icon",
     "HaSensor icon must be an icon as Home Assistant names them, 'prefix:name' like "
     "'mdi:solar-power', got 'solar-power'"),
    (HaSensor, {"extra": {"unit_of_measurement": "W"}}, "extra['unit_of_measurement']",
     "HaSensor extra['unit_of_measurement'] = 'W': 'unit_of_measurement' is HaSensor's "
     "argument 'unit'; pass unit='W' instead"),
    (HaSensor, {"extra": {"frc_upd": True}}, "extra['frc_upd']",
     "HaSensor extra['frc_upd'] = True: 'frc_upd' is Home Assistant's abbreviation of "
     "'force_update'; write the long name (the consumer writes configs in full)"),
    (HaSensor, {"extra": {"force_updte": True}}, "extra['force_updte']",
     "HaSensor extra['force_updte'] = True: 'force_updte' is not a key of Home Assistant's "
     "HaSensor discovery schema (it drops it) (did you mean 'force_update'?)"),
    (HaSensor, {"extra": {"payload_on": "1"}}, "extra['payload_on']",
     "HaSensor extra['payload_on'] = '1': 'payload_on' is a discovery key of other entity "
     "kinds, not of HaSensor"),
    (HaSensor, {"extra": {"state_topic": "x"}}, "extra['state_topic']",
     "HaSensor extra['state_topic'] = 'x': 'state_topic' is set by the consumer (from the "
     "topic, the device and the key)"),
    (HaSensor, {"extra": {"force_update": "yes"}}, "extra['force_update']",
     "extra['force_update'] must be a bool, got 'yes'"),
    (HaSensor, {"extra": ["force_update"]}, "extra",
     "HaSensor extra must be a mapping of Home Assistant discovery keys to values, got "
     "['force_update']"),
    (HaBinarySensor, {"device_class": "fault"}, "device_class",
     "HaBinarySensor device_class must be a Home Assistant binary sensor device class, got "
     "'fault' (did you mean 'problem'?)"),
    (HaBinarySensor, {"payload_on": "1", "payload_off": "1"}, "payload_off",
     "payload_off cannot be combined with payload_on (the two states need different "
     "payloads); got payload_off='1'"),
    (HaBinarySensor, {"payload_on": "it's on"}, "payload_on",
     "HaBinarySensor payload_on must not hold ' or \\ (it is written into the value "
     "template)"),
    (HaBinarySensor, {"off_delay": -5}, "off_delay", "off_delay must be an int >= 0, got -5"),
    (HaBinarySensor, {"extra": {"unit_of_measurement": "W"}}, "extra['unit_of_measurement']",
     "HaBinarySensor extra['unit_of_measurement'] = 'W': 'unit_of_measurement' is a "
     "discovery key of other entity kinds, not of HaBinarySensor"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name", "message"), BAD,
                         ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n, _) in enumerate(BAD)])
def test_bad_entities_are_refused_with_home_assistants_spelling(
        cls: type[Any], kwargs: dict[str, Any], name: str, message: str) -> None:
    with pytest.raises(SettingError) as caught:
        cls("k", "K", **kwargs)
    assert caught.value.name == name
    assert str(caught.value) == message


def test_home_assistants_key_names_as_arguments_get_a_hint() -> None:
    with pytest.raises(SettingError) as caught:
        HaSensor("p", "P", unit_of_measurement="W")  # type: ignore[call-arg]
    assert caught.value.name == "unit_of_measurement"
    assert str(caught.value) == (
        "HaSensor unit_of_measurement is not an argument of HaSensor: 'unit_of_measurement' "
        "is Home Assistant's name; HaSensor calls it 'unit'")
    with pytest.raises(SettingError, match=r"'pl_on' \(Home Assistant's abbreviation of "
                                           r"'payload_on'\) is Home Assistant's name; "
                                           r"HaBinarySensor calls it 'payload_on'"):
        HaBinarySensor("f", "F", pl_on="1")  # type: ignore[call-arg]
    with pytest.raises(SettingError, match=r"pass it in extra \(extra=\{'force_update': "):
        HaSensor("p", "P", force_update=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        HaSensor("p", "P", bogus=1)  # type: ignore[call-arg]


def test_home_assistants_spellings_are_accepted_as_it_accepts_them() -> None:
    sensor = HaSensor("t", "T", unit="°C", device_class="Temperature",
                      state_class="MEASUREMENT")
    assert (sensor.device_class, sensor.state_class) == ("temperature", "measurement")
    micro = HaSensor("c", "C", unit="\u00b5S/cm", device_class="conductivity")  # legacy µ
    assert micro.unit == "\u00b5S/cm"
    assert HaSensor("m", "M", unit="EUR", device_class="monetary", state_class="total").unit
    assert HaSensor("q", "Q", device_class="aqi").unit is None
    assert set(ha.DEVICE_CLASS_UNITS["energy"]) >= {"Wh", "kWh"}


def test_an_entity_kind_repeating_an_object_id_or_none_at_all_is_refused() -> None:
    with pytest.raises(SettingError, match=r"binary_sensors\[0\].key repeats object id 'x'"):
        HaDiscovery("n", "N", sensors=[HaSensor("x", "X")],
                    binary_sensors=[HaBinarySensor("x", "X")])
    with pytest.raises(SettingError, match="HaDiscovery sensors must not be empty"):
        HaDiscovery("n", "N")
    assert HaDiscovery("n", "N", binary_sensors=[HaBinarySensor("x", "X")]).entities


CONFIG = """
[producer]
function = "{module}:read"
[[consumers]]
type = "mqtt"
topic = "home/inverter/state"
[consumers.discovery]
node_id = "inverter"
device_name = "Inverter"
{entities}
"""


@pytest.mark.parametrize(("entities", "key", "message"), [
    ('sensors = [{ key = "p", name = "P", unit_of_measurement = "W" }]',
     "consumers[0].discovery.sensors[0].unit_of_measurement",
     "unknown option for HaSensor: 'unit_of_measurement' is Home Assistant's name; HaSensor "
     "calls it 'unit'"),
    ('sensors = [{ key = "p", name = "P", dev_cla = "power" }]',
     "consumers[0].discovery.sensors[0].dev_cla",
     "unknown option for HaSensor: 'dev_cla' (Home Assistant's abbreviation of "
     "'device_class') is Home Assistant's name; HaSensor calls it 'device_class'"),
    ('sensors = [{ key = "p", name = "P", force_update = true }]',
     "consumers[0].discovery.sensors[0].force_update",
     "unknown option for HaSensor: 'force_update' is a Home Assistant discovery key without "
     "an argument of its own: pass it in extra (extra={'force_update': ...}; in TOML extra = "
     "{ force_update = ... })"),
    ('binary_sensors = [{ key = "f", name = "F", state_topic = "x" }]',
     "consumers[0].discovery.binary_sensors[0].state_topic",
     "unknown option for HaBinarySensor: 'state_topic' is set by the consumer"),
    ('sensors = [{ key = "e", name = "E", unit = "W", device_class = "energy" }]',
     "consumers[0].discovery.sensors[0].unit", "got 'W' (did you mean 'Wh'?)"),
    ('sensors = [{ key = "e", name = "E", state_class = "total-increasing" }]',
     "consumers[0].discovery.sensors[0].state_class", "(did you mean 'total_increasing'?)"),
    ('binary_sensors = 3', "consumers[0].discovery.binary_sensors",
     "expected an array of tables"),
    ('manufacturer = "ACME"', "consumers[0].discovery.sensors",
     "missing; expected an array of tables"),
])
def test_the_config_file_gets_the_same_checks_and_hints(
        tmp_path: Path, entities: str, key: str, message: str) -> None:
    module = f"m_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("def read(event_time):\n    return {}\n")
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(module=module, entities=entities))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    assert message in str(caught.value)


def test_the_tables_are_home_assistants() -> None:
    """A spot check of the generated tables against values documented by Home Assistant."""
    assert ha.HA_VERSION == "2026.11.0"
    assert "W" in ha.DEVICE_CLASS_UNITS["power"] and "W" not in ha.DEVICE_CLASS_UNITS["energy"]
    assert ha.DEVICE_CLASS_STATE_CLASSES["energy"] == {"total", "total_increasing"}
    assert ha.ABBREVIATIONS["unit_of_meas"] == "unit_of_measurement"
    assert ha.DEVICE_ABBREVIATIONS["ids"] == "identifiers"
    assert "problem" in ha.BINARY_SENSOR_DEVICE_CLASSES
    assert ha.ENTITY_CATEGORIES == ("config", "diagnostic")
    assert json.dumps(sorted(ha.NON_NUMERIC_DEVICE_CLASSES)) == (
        '["date", "enum", "timestamp", "uptime"]')
