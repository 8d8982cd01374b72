"""SIGHUP reloads ``aioconveyor run``'s file: the plan (pure), the Reloader in-process, and the
real thing in a subprocess, where no produced row may be lost across a consumer swap."""

from __future__ import annotations

import csv
import itertools
import logging
import os
import signal
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from aioconveyor._config import ConfigTables, load_config
from aioconveyor._reload import Reloader, ReloadPlan, plan_reload
from support.runner import Runner, kill_all, write


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_config puts the config's folder on sys.path; keep that within each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def module(tmp_path: Path) -> str:
    """The helper module below, written next to the config files under a unique name."""
    name = f"reload_helpers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HELPERS))
    return name


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    kill_all(started)


HELPERS = """
    import pathlib

    n = 0

    def produce(event_time):
        global n
        n += 1
        return {"n": n}

    class Tracked:
        '''Appends each event_time to <label>.txt; logs open and close to events.log.'''

        def __init__(self, label):
            self.label = label

        def _log(self, what):
            with open("events.log", "a") as fh:
                fh.write(f"{what} {self.label} {id(self)}\\n")

        async def open(self):
            self._log("open")

        async def close(self):
            self._log("close")

        def __call__(self, data, event_time):
            with open(f"{self.label}.txt", "a") as fh:
                fh.write(f"{event_time.isoformat()}\\n")

    counts = {}

    def read(event_time, *, name):
        counts[name] = counts.get(name, 0) + 1
        return {"producer": name, "n": counts[name]}

    class Rows(Tracked):
        # appends "<producer> <event_time>" per record to <label>.txt, after delay seconds

        def __init__(self, label, delay=0.0):
            super().__init__(label)
            self.delay = delay

        def __call__(self, data, event_time):
            import time
            time.sleep(self.delay)
            with open(f"{self.label}.txt", "a") as fh:
                fh.write(f"{data['producer']} {event_time.isoformat()}\\n")
"""


def tables(**consumers: dict[str, object]) -> ConfigTables:
    return ConfigTables({"conveyor": {"interval": 1}, "producer": {"function": "m:f"}},
                        consumers)


# -- the plan (pure) -------------------------------------------------------------------


def test_the_same_tables_change_nothing() -> None:
    running = tables(csv={"type": "csv", "path": "a.csv"}, pretty={"type": "pretty"})
    plan = plan_reload(running, tables(csv={"type": "csv", "path": "a.csv"},
                                       pretty={"type": "pretty"}))
    assert plan == ReloadPlan(unchanged=("csv", "pretty"))
    assert not plan.consumers_change
    assert plan.summary() == "0 replaced, 0 added, 0 removed, 2 unchanged"


def test_consumers_are_matched_by_name() -> None:
    running = tables(keep={"type": "pretty"}, move={"type": "csv", "path": "a.csv"},
                     gone={"type": "pretty", "max_rows": 3})
    new = tables(new={"type": "pretty"}, move={"type": "csv", "path": "b.csv"},
                 keep={"type": "pretty"})
    plan = plan_reload(running, new)
    assert plan == ReloadPlan(added=("new",), removed=("gone",), changed=("move",),
                              unchanged=("keep",))
    assert plan.consumers_change
    assert plan.summary() == ("1 replaced (move), 1 added (new), 1 removed (gone), "
                              "1 unchanged")


def test_a_changed_nested_option_is_a_change() -> None:
    sensors = [{"key": "t", "name": "T"}]
    running = tables(mqtt={"type": "mqtt", "discovery": {"node_id": "x", "sensors": sensors}})
    new = tables(mqtt={"type": "mqtt", "discovery": {"node_id": "x",
                                                      "sensors": [{"key": "t", "name": "U"}]}})
    assert plan_reload(running, new).changed == ("mqtt",)


@pytest.mark.parametrize("section", ["conveyor", "producer", "leader", "metrics"])
def test_other_tables_need_a_restart(section: str) -> None:
    running = tables(c={"type": "pretty"})
    sections = dict(running.sections)
    sections[section] = {"changed": True}
    plan = plan_reload(running, ConfigTables(sections, {"c": {"type": "pretty"}}))
    assert plan.restart_needed == (section,)
    assert plan.unchanged == ("c",)
    assert plan.summary().endswith(f"; not applied (needs a restart): [{section}]")


def test_a_missing_conveyor_table_is_the_same_as_an_empty_one() -> None:
    assert not plan_reload(ConfigTables({"conveyor": None}), ConfigTables({})).restart_needed
    assert not plan_reload(ConfigTables({"conveyor": {}}), ConfigTables({})).restart_needed
    assert plan_reload(ConfigTables({}), ConfigTables({"metrics": {"listen": "h:1"}})
                       ).restart_needed == ("metrics",)


def test_tables_are_compared_after_env_and_overrides(tmp_path: Path, module: str) -> None:
    path = write(tmp_path / "conveyor.toml", f"""
        [producer]
        function = "{module}:produce"
        [[consumers]]
        type = "csv"
        name = "readings"
        path = "${{OUT_DIR}}/readings.csv"
        [[consumers]]
        type = "pretty"
        [[consumers]]
        type = "pretty"
        max_rows = 5
    """)
    first = load_config(path, env={"OUT_DIR": "/a"})
    assert list(first.tables.consumers) == ["readings", "pretty", "pretty#2"]
    assert first.tables.consumers["readings"]["path"] == "/a/readings.csv"
    assert plan_reload(first.tables, load_config(path, env={"OUT_DIR": "/a"}).tables) == (
        ReloadPlan(unchanged=("readings", "pretty", "pretty#2")))
    moved = load_config(path, env={"OUT_DIR": "/b"})
    assert plan_reload(first.tables, moved.tables).changed == ("readings",)
    overridden = load_config(path, env={"OUT_DIR": "/a"}, overrides=["consumers[2].max_rows=6"])
    assert plan_reload(first.tables, overridden.tables).changed == ("pretty#2",)
    # the ready-made specs carry the runner's names, for add_consumer / replace_consumer
    assert {n: s.name for n, s in first.specs.items()} == {
        "readings": "readings", "pretty": "pretty", "pretty#2": "pretty#2"}


def many(producers: dict[str, dict[str, object]], **consumers: dict[str, object]
         ) -> ConfigTables:
    return ConfigTables({"conveyor": {}, "producer": None}, consumers, producers)


def test_producers_are_matched_by_name() -> None:
    pretty = {"type": "pretty"}
    running = many({"keep": {"function": "m:f", "every": 1},
                    "move": {"function": "m:f", "every": 1},
                    "gone": {"function": "m:f", "every": 2}}, c=pretty)
    new = many({"move": {"function": "m:f", "every": 5}, "keep": {"function": "m:f", "every": 1},
                "new": {"function": "m:g", "every": 1}}, c=pretty)
    plan = plan_reload(running, new)
    assert plan == ReloadPlan(unchanged=("c",), producers_added=("new",),
                              producers_removed=("gone",), producers_changed=("move",),
                              producers_unchanged=("keep",))
    assert plan.producers_change and not plan.consumers_change
    assert plan.summary() == ("0 replaced, 0 added, 0 removed, 1 unchanged; producers: "
                              "1 replaced (move), 1 added (new), 1 removed (gone), 1 unchanged")


def test_switching_between_producer_and_producers_needs_a_restart() -> None:
    single = tables(c={"type": "pretty"})
    several = ConfigTables({"conveyor": {"interval": 1}, "producer": None},
                           {"c": {"type": "pretty"}}, {"p": {"function": "m:f"}})
    for old, new in ((single, several), (several, single)):
        plan = plan_reload(old, new)
        assert plan.restart_needed == ("producer",)
        assert not plan.producers_change and plan.unchanged == ("c",)


# -- the Reloader, in-process ------------------------------------------------------------


def test_a_consumer_that_fails_to_open_is_tried_again_on_the_next_reload(
    tmp_path: Path, module: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # Tracked writes next to the config
    text = f"""
        [conveyor]
        interval = 0.05
        [producer]
        function = "{module}:produce"
        [[consumers]]
        type = "{module}:Tracked"
        label = "all"
        name = "all"
    """
    path = write(tmp_path / "conveyor.toml", text)
    loaded = load_config(path)
    conv = loaded.conveyor
    reloader = Reloader(conv, loaded, timeout=5)
    (tmp_path / "late.csv").write_text("not,our,header\n")  # CsvConsumer refuses to open it
    with conv:
        write(path, text + f'[[consumers]]\ntype = "csv"\nname = "late"\npath = "{tmp_path}/late.csv"\n')
        with caplog.at_level(logging.INFO, logger="aioconveyor"):
            plan = reloader.reload()
        assert plan is not None and plan.added == ("late",)
        assert conv.consumer_names == ("all",)
        assert "reload: could not add consumer late (it is not running; the next reload " in (
            caplog.text)
        assert "1 added (late), 0 removed, 1 unchanged; failed (see above): late" in caplog.text
        (tmp_path / "late.csv").unlink()
        plan = reloader.reload()
        assert plan is not None and plan.added == ("late",)
        assert conv.consumer_names == ("all", "late")
        assert reloader.reload() == ReloadPlan(unchanged=("all", "late"))
        deadline = time.monotonic() + 10
        while conv.stats().consumer("late").delivered < 2:
            assert time.monotonic() < deadline, conv.stats()
            time.sleep(0.02)
    assert csv_times(tmp_path / "late.csv")
    opens = (tmp_path / "events.log").read_text().split("\n")
    assert sum(line.startswith("open all ") for line in opens) == 1


def test_a_replacement_that_fails_to_open_leaves_the_old_consumer_running(
    tmp_path: Path, module: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    text = f"""
        [conveyor]
        interval = 0.05
        [producer]
        function = "{module}:produce"
        [[consumers]]
        type = "csv"
        name = "readings"
        path = "a.csv"
    """
    path = write(tmp_path / "conveyor.toml", text)
    loaded = load_config(path)
    conv = loaded.conveyor
    reloader = Reloader(conv, loaded, timeout=5)
    (tmp_path / "b.csv").write_text("not,our,header\n")
    with conv:
        write(path, text.replace("a.csv", "b.csv"))
        with caplog.at_level(logging.INFO, logger="aioconveyor"):
            assert reloader.reload() == ReloadPlan(changed=("readings",))
        assert "reload: could not replace consumer readings (the old one keeps running)" in (
            caplog.text)
        before = len(csv_times(tmp_path / "a.csv"))
        deadline = time.monotonic() + 10
        while len(csv_times(tmp_path / "a.csv")) < before + 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        (tmp_path / "b.csv").unlink()
        assert reloader.reload() == ReloadPlan(changed=("readings",))  # tried again
        while not csv_times(tmp_path / "b.csv"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    a, b = csv_times(tmp_path / "a.csv"), csv_times(tmp_path / "b.csv")
    assert len(a) + len(b) == len(set(a + b)) == conv.stats().produced


def test_a_producer_whose_new_consumer_fails_to_open_is_added_on_the_next_reload(
    tmp_path: Path, module: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    text = f"""
        [[producers]]
        name = "inverter"
        function = "{module}:read"
        every = 0.05
        [[consumers]]
        type = "{module}:Rows"
        label = "all"
        name = "all"
    """
    path = write(tmp_path / "conveyor.toml", text)
    loaded = load_config(path)
    conv = loaded.conveyor
    reloader = Reloader(conv, loaded, timeout=5)
    (tmp_path / "late.csv").write_text("not,our,header\n")  # CsvConsumer refuses to open it
    with conv:
        write(path, text.replace('name = "inverter"', 'name = "inverter"\nconsumers = ["al"]'))
        with caplog.at_level(logging.INFO, logger="aioconveyor"):
            assert reloader.reload() is None  # a broken file: nothing changes, and why
        assert "producers[0].consumers[0]: no consumer named 'al' (did you mean 'all'?)" in (
            caplog.text)
        assert "keeping the running configuration" in caplog.text
        write(path, text + f"""
            [[producers]]
            name = "gas"
            function = "{module}:read"
            every = 0.05
            consumers = ["late"]
            [[consumers]]
            type = "csv"
            name = "late"
            path = "{tmp_path}/late.csv"
        """)
        with caplog.at_level(logging.INFO, logger="aioconveyor"):
            plan = reloader.reload()
        assert plan is not None and plan.producers_added == ("gas",)
        assert conv.producer_names == ("inverter",) and conv.consumer_names == ("all",)
        assert "reload: could not add producer gas (it is not running; " in caplog.text
        assert "failed (see above): late, producer gas" in caplog.text
        (tmp_path / "late.csv").unlink()
        plan = reloader.reload()  # tried again: both go in
        assert plan is not None and plan.added == ("late",) and plan.producers_added == ("gas",)
        assert conv.producer_names == ("inverter", "gas")
        assert reloader.reload() == ReloadPlan(unchanged=("all", "late"),
                                               producers_unchanged=("inverter", "gas"))
        deadline = time.monotonic() + 10
        while conv.stats().producer("gas").produced < 2:
            assert time.monotonic() < deadline, conv.stats()
            time.sleep(0.02)
    stats = conv.stats()
    # the inverter feeds both consumers, gas only the late one; nothing was lost
    assert stats.consumer("all").delivered == stats.producer("inverter").produced
    assert stats.consumer("late").delivered >= stats.producer("gas").produced + 1
    assert stats.consumer("late").dropped == stats.consumer("all").dropped == 0


# -- SIGHUP to a real runner -------------------------------------------------------------


def v1(module: str) -> str:
    return f"""
        [conveyor]
        interval = 0.05
        stop_timeout = 5

        [producer]
        function = "{module}:produce"

        [[consumers]]
        type = "csv"
        name = "readings"
        path = "${{OUT_DIR}}/a.csv"

        [[consumers]]
        type = "{module}:Tracked"
        name = "all"
        label = "all"

        [[consumers]]
        type = "{module}:Tracked"
        name = "gone"
        label = "gone"
    """


def v2(module: str) -> str:
    return (v1(module)
            .replace("a.csv", "b.csv")
            .replace("stop_timeout = 5", "stop_timeout = 6")
            .replace('name = "gone"\n        label = "gone"', 'name = "extra"\n        label = "extra"'))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def csv_times(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [row["event_time"] for row in csv.DictReader(fh)]


def start(tmp_path: Path, module: str, runners: list[Runner]) -> tuple[Runner, Path]:
    path = write(tmp_path / "conveyor.toml", v1(module))
    env = {**os.environ, "OUT_DIR": str(tmp_path / "data")}
    runner = Runner(tmp_path, path, env=env)
    runners.append(runner)
    runner.wait_until(lambda: len(csv_times(tmp_path / "data" / "a.csv")) >= 3, "3 CSV rows")
    return runner, path


def test_sighup_swaps_changed_consumers_without_losing_a_row(
    tmp_path: Path, module: str, runners: list[Runner],
) -> None:
    runner, path = start(tmp_path, module, runners)
    write(path, v2(module))
    runner.send(signal.SIGHUP)
    runner.wait_for_log(
        r"reload of \S+: 1 replaced \(readings\), 1 added \(extra\), 1 removed \(gone\), "
        r"1 unchanged; not applied \(needs a restart\): \[conveyor\]$")
    assert "WARNING aioconveyor._reload: reload: [conveyor] changed in " in runner.stderr
    runner.wait_until(lambda: len(csv_times(tmp_path / "data" / "b.csv")) >= 3
                      and len(lines(tmp_path / "extra.txt")) >= 3, "rows after the reload")
    assert runner.stop() == 0, runner.stderr

    a, b = csv_times(tmp_path / "data" / "a.csv"), csv_times(tmp_path / "data" / "b.csv")
    produced = lines(tmp_path / "all.txt")  # the unchanged consumer saw every item
    assert len(produced) == len(set(produced)) >= 6
    assert Counter(a + b) == Counter(produced), "a row was lost or written twice in the swap"
    assert max(a) < min(b), "the old file got rows after the new one started"
    gone, extra = lines(tmp_path / "gone.txt"), lines(tmp_path / "extra.txt")
    assert gone == produced[:len(gone)] and extra == produced[-len(extra):]
    assert max(gone) < min(extra)  # removals go first, then additions

    events = [line.split()[:2] for line in lines(tmp_path / "events.log")]
    assert events.count(["open", "all"]) == 1 and events.count(["close", "all"]) == 1, (
        "the unchanged consumer was reopened")
    assert events.index(["close", "gone"]) < events.index(["close", "all"])  # at the reload
    assert events.count(["open", "extra"]) == 1
    assert f"readings: {len(produced)} delivered, 0 errors, 0 dropped" in runner.stdout
    assert "  gone:" not in runner.stdout and "  extra: " in runner.stdout


def test_a_broken_file_on_sighup_keeps_the_running_pipeline(
    tmp_path: Path, module: str, runners: list[Runner],
) -> None:
    runner, path = start(tmp_path, module, runners)
    runner.send(signal.SIGHUP)  # the same file: nothing to do
    runner.wait_for_log(r"reload of \S+: 0 replaced, 0 added, 0 removed, 3 unchanged$")

    write(path, v2(module).replace("[[consumers]]", "[[consumers]", 1))
    runner.send(signal.SIGHUP)
    runner.wait_for_log(rf"ERROR   aioconveyor._reload: reload: {path}: not valid TOML: .*; "
                        r"keeping the running configuration$")
    write(path, v2(module).replace('name = "readings"', 'name = "readings"\n        retries = -1'))
    runner.send(signal.SIGHUP)
    runner.wait_for_log(rf"reload: {path}: consumers\[0\]\.retries: must be an int >= 0, got -1; "
                        r"keeping the running configuration$")
    write(path, v2(module).replace("${OUT_DIR}", "${NO_SUCH_VARIABLE}"))
    runner.send(signal.SIGHUP)
    runner.wait_for_log(rf"reload: {path}: consumers\[0\]\.path: environment variable "
                        r"NO_SUCH_VARIABLE is not set")

    seen = len(lines(tmp_path / "all.txt"))
    runner.wait_until(lambda: len(lines(tmp_path / "all.txt")) >= seen + 3
                      and len(lines(tmp_path / "gone.txt")) >= seen + 3, "deliveries go on")
    assert runner.stop() == 0, runner.stderr
    assert not (tmp_path / "data" / "b.csv").exists() and not (tmp_path / "extra.txt").exists()
    assert csv_times(tmp_path / "data" / "a.csv") == lines(tmp_path / "all.txt")
    events = [line.split()[:2] for line in lines(tmp_path / "events.log")]
    assert events.count(["open", "all"]) == 1 and events.count(["open", "gone"]) == 1
    assert "summary: stopped (SIGTERM)" in runner.stdout


def test_sighup_never_ends_the_runner(
    tmp_path: Path, module: str, runners: list[Runner],
) -> None:
    """SIGHUP's default action would end the process; the runner must catch it."""
    runner, _ = start(tmp_path, module, runners)
    for _ in range(3):
        runner.send(signal.SIGHUP)
    runner.wait_for_log(r"reload of \S+: ", count=1)
    assert runner.process.poll() is None
    assert runner.stop() == 0, runner.stderr



# -- SIGHUP with [[producers]]: add one, remove one, change one's schedule and routes ------


def producers_v1(module: str) -> str:
    return f"""
        [conveyor]
        stop_timeout = 5

        [[producers]]
        name = "inverter"
        function = "{module}:read"
        every = 0.1
        consumers = ["all", "old", "files"]

        [[producers]]
        name = "meter"
        function = "{module}:read"
        every = 0.1
        offset = 0.05
        consumers = ["all", "old"]

        [[producers]]
        name = "weather"
        function = "{module}:read"
        every = 0.2

        [[consumers]]
        type = "{module}:Rows"
        name = "all"
        label = "all"

        [[consumers]]
        type = "{module}:Rows"
        name = "old"
        label = "old"
        delay = 0.08                # slower than its producers: a queue builds up

        [[consumers]]
        type = "csv"
        name = "files"
        path = "${{OUT_DIR}}/{{producer}}.csv"
    """


def producers_v2(module: str) -> str:
    """meter and the consumer "old" it named go; inverter ticks twice as often and feeds
    the new consumer "new" (which does not exist before the reload); gas is new."""
    text = producers_v1(module)
    meter = text[text.index('        [[producers]]\n        name = "meter"'):
                 text.index('        [[producers]]\n        name = "weather"')]
    old = text[text.index(f'        [[consumers]]\n        type = "{module}:Rows"\n'
                          '        name = "old"'):
               text.index('        [[consumers]]\n        type = "csv"')]
    text = text.replace(meter, "").replace(old, "")
    text = text.replace('every = 0.1\n        consumers = ["all", "old", "files"]',
                        'every = 0.05\n        consumers = ["all", "files", "new"]')
    return text + f"""
        [[producers]]
        name = "gas"
        function = "{module}:read"
        every = 0.1
        consumers = ["all", "files"]

        [[consumers]]
        type = "{module}:Rows"
        name = "new"
        label = "new"
    """


def rows_of(path: Path, producer: str) -> list[str]:
    return [line.split()[1] for line in lines(path) if line.split()[0] == producer]


def test_sighup_adds_removes_and_replaces_producers_without_losing_a_row(
    tmp_path: Path, module: str, runners: list[Runner],
) -> None:
    path = write(tmp_path / "conveyor.toml", producers_v1(module))
    runner = Runner(tmp_path, path, env={**os.environ, "OUT_DIR": str(tmp_path / "data")})
    runners.append(runner)
    runner.wait_until(lambda: len(rows_of(tmp_path / "old.txt", "meter")) >= 3, "meter rows")
    write(path, producers_v2(module))
    runner.send(signal.SIGHUP)
    runner.wait_for_log(
        r"reload of \S+: 0 replaced, 1 added \(new\), 1 removed \(old\), 2 unchanged; "
        r"producers: 1 replaced \(inverter\), 1 added \(gas\), 1 removed \(meter\), "
        r"1 unchanged$")
    runner.wait_until(lambda: len(rows_of(tmp_path / "new.txt", "inverter")) >= 6
                      and len(rows_of(tmp_path / "all.txt", "gas")) >= 3, "rows after the reload")
    assert runner.stop() == 0, runner.stderr
    assert "ERROR" not in runner.stderr and "drain timeout" not in runner.stderr, runner.stderr

    everything = lines(tmp_path / "all.txt")
    assert len(everything) == len(set(everything))  # nothing twice
    inverter = rows_of(tmp_path / "all.txt", "inverter")
    steps = {round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 3)
             for a, b in itertools.pairwise(inverter)}
    assert steps == {0.1, 0.05}, steps  # on its grid before and after: no tick lost
    # what the removed consumer had queued reached it; the new one took over the inverter
    old_inverter = rows_of(tmp_path / "old.txt", "inverter")
    assert old_inverter == inverter[:len(old_inverter)]
    new_inverter = rows_of(tmp_path / "new.txt", "inverter")
    assert new_inverter == inverter[-len(new_inverter):]
    # the removed consumer delivered its whole queue: every row of the removed producer
    assert rows_of(tmp_path / "old.txt", "meter") == rows_of(tmp_path / "all.txt", "meter")
    # the files consumer stayed open and got the inverter's, the weather's and gas' rows
    for producer in ("inverter", "weather", "gas"):
        assert csv_times(tmp_path / "data" / f"{producer}.csv") == rows_of(
            tmp_path / "all.txt", producer), producer
    assert not (tmp_path / "data" / "meter.csv").exists()
    events = [line.split()[:2] for line in lines(tmp_path / "events.log")]
    assert events.count(["open", "all"]) == 1 and events.count(["close", "old"]) == 1
    assert f"all: {len(everything)} delivered, 0 errors, 0 dropped" in runner.stdout
