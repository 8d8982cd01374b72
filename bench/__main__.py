"""``python -m bench [--quick] [--only NAME ...] [--update-readme]``: run the benchmarks.

Prints one table per benchmark (each with ratios against the peers measured in this same
run), then the targets of issue 9, and writes everything to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._util import ROOT, Section, machine, markdown_table, text_table

BENCHMARKS = ("punctuality", "cpu", "fanout", "postgres", "mqtt", "memory", "importtime",
              "hotpath", "tickcost", "fleet", "nats", "influx", "webhook", "redis",
              "fleet_sim")
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _clean(value: Any) -> Any:
    """JSON without NaN (as null)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def run_one(name: str, quick: bool) -> list[Section]:
    """The benchmark's table(s): a module's ``run`` returns one section or a list."""
    module = importlib.import_module(f"bench.{name}")
    started = time.monotonic()
    try:
        result: Section | list[Section] = module.run(quick)
    except Exception as exc:
        result = Section(name, f"{name}: FAILED", [("error", "error")],
                         rows=[{"error": f"{type(exc).__name__}: {exc}"}])
        traceback.print_exc()
    sections = result if isinstance(result, list) else [result]
    for section in sections:
        section.seconds = (time.monotonic() - started) / len(sections)
    return sections


def print_section(section: Section) -> None:
    print(f"\n== {section.title}  ({section.seconds:.0f} s)")
    print(text_table(section.columns, section.rows))
    for note in section.notes:
        print(f"   * {note}")


def targets_rows(sections: list[Section]) -> list[dict[str, Any]]:
    return [{"target": t.name, "goal": t.goal, "value": t.value, "unit": t.unit,
             "met": "met" if t.met else "MISSED"} for s in sections for t in s.targets]


TARGET_COLUMNS = [("target", "target"), ("goal", "goal"), ("value", "measured"),
                  ("unit", "unit"), ("met", "result")]


def markdown(report: dict[str, Any], sections: list[Section]) -> str:
    m = report["machine"]
    command = "python -m bench --quick" if report["quick"] else "python -m bench"
    lines = [
        f"Measured {report['finished']} at commit `{m['commit']}` with `{command}`"
        f" in {report['seconds']:.0f} s on {m['cpu']} ({m['cores']} cores, "
        f"{m['memory_gib']} GiB), {m['os']}, Python {m['python']}; load average at start "
        f"{', '.join(str(x) for x in m['load_at_start'])}.",
        "",
        "### Targets",
        "",
        markdown_table(TARGET_COLUMNS, targets_rows(sections)),
    ]
    for s in sections:
        lines += ["", f"### {s.title}", "", markdown_table(s.columns, s.rows)]
        lines += [""] + [f"* {n}" for n in s.notes] if s.notes else []
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = README.read_text()
    head, sep, rest = readme.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        print(f"{README} has no {BEGIN} ... {END} markers; not updated", file=sys.stderr)
        return
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def render(path: Path, readme: bool) -> int:
    report = json.loads(path.read_text())
    sections = [Section.from_dict(d) for d in report["sections"].values()]
    for section in sections:
        print_section(section)
    print("\n== Targets")
    print(text_table(TARGET_COLUMNS, targets_rows(sections)))
    if readme:
        update_readme(markdown(report, sections))
        print(f"tables written to {README}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 3 minutes)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json",
                        help="where to write the JSON results (default: %(default)s)")
    parser.add_argument("--update-readme", action="store_true",
                        help="put the tables into bench/README.md between its markers")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="run nothing: print (and with --update-readme, write) the tables "
                             "of an earlier results file")
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.update_readme)

    started = time.monotonic()
    report: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
                              "quick": args.quick, "machine": machine()}
    print(f"aioconveyor benchmarks{' (quick)' if args.quick else ''} on "
          f"{report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
          f"{report['machine']['python']}, load {report['machine']['load_at_start']}")
    sections: list[Section] = []
    for name in args.only or BENCHMARKS:
        for section in run_one(name, args.quick):
            print_section(section)
            sections.append(section)

    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["seconds"] = round(time.monotonic() - started, 1)
    report["sections"] = {s.name: s.as_dict() for s in sections}
    report["targets"] = [t.as_dict() for s in sections for t in s.targets]
    print("\n== Targets")
    print(text_table(TARGET_COLUMNS, targets_rows(sections)))
    missed = [t.name for s in sections for t in s.targets if not t.met]
    print(f"\n{len(report['targets']) - len(missed)} of {len(report['targets'])} targets met"
          f"{'; missed: ' + ', '.join(missed) if missed else ''} ({report['seconds']:.0f} s)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_clean(report), indent=1) + "\n")
    print(f"results: {args.out}")
    if args.update_readme:
        update_readme(markdown(report, sections))
        print(f"tables written to {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
