"""The benchmark suite's entry point: ``.venv/bin/python -m benchmarks`` (what ``make bench`` runs).

It runs the sections (all of them, or those named with ``--section``), prints one table and,
for a full run, writes it to ``benchmarks/results.csv`` with the machine it was measured on in
``benchmarks/results.json``. ``--quick`` runs every section small (fewer repeats, fewer sizes)
to check that the suite works; its numbers are not worth keeping, so it writes a CSV only when
given ``--csv``. ``--markdown`` prints the README's table generated from a saved CSV, and
``--readme`` writes it into README.md's Benchmarks section, between its two markers.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import attribution_speed, selectivity_speed, streaming, throughput
from benchmarks.table import Row, describe_machine, format_machine, format_section_markdown, format_text, read_csv, write_csv
from benchmarks.worker import ROOT

RESULTS = Path(__file__).resolve().parent / "results.csv"
README = ROOT / "README.md"
README_START = "<!-- benchmarks: generated from benchmarks/results.csv by `.venv/bin/python -m benchmarks --readme` -->"
README_END = "<!-- end of the generated benchmarks -->"
PROGRESS_VARIABLE = "UNDERSTANDING_NN_PROGRESS"


@dataclass(frozen=True)
class Section:
    """One part of the suite: what runs it, and how the README shows it."""

    run: Callable[[bool], list[Row]]
    title: str
    columns: str  # the field of Row whose values are the Markdown table's columns


SECTIONS = {
    attribution_speed.SECTION: Section(
        attribution_speed.section, "Every method against one gradient (forward + backward pass)", "model"
    ),
    throughput.SECTION: Section(throughput.section, "Throughput by intra-op threads and batch size", "threads"),
    streaming.SECTION: Section(streaming.section, "The streaming path: a data set explained to disk", "model"),
    selectivity_speed.SECTION: Section(
        selectivity_speed.section, "Pixel flipping against its forward passes alone", "model"
    ),
}


def markdown(rows: Sequence[Row], machine: dict[str, str]) -> str:
    """The README's table: where it was measured, then one Markdown table per section."""
    parts = [format_machine(machine)]
    for name, section in SECTIONS.items():
        chosen = [row for row in rows if row.section == name]
        if chosen:
            parts.append(format_section_markdown(chosen, title=section.title, by=section.columns))
    unknown = sorted({row.section for row in rows} - set(SECTIONS))
    if unknown:
        raise ValueError(f"the table has rows of sections the suite does not know: {', '.join(unknown)}")
    return "\n\n".join(parts)


def update_readme(text: str, readme: Path = README) -> None:
    """Replace what lies between the README's two benchmark markers with ``text``."""
    content = readme.read_text()
    start, end = content.find(README_START), content.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no benchmark markers: put {README_START!r} and {README_END!r} where the table goes")
    readme.write_text(content[: start + len(README_START)] + "\n\n" + text + "\n\n" + content[end:])


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module's docstring); ``argv`` ``None`` reads ``sys.argv``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", action="append", choices=list(SECTIONS), metavar="NAME",
                        help=f"run this section only (repeatable): {', '.join(map(repr, SECTIONS))}")
    parser.add_argument("--quick", action="store_true", help="every section small: checks the suite, numbers not kept")
    parser.add_argument("--csv", type=Path, help=f"where to write the table (a full run's default: {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--markdown", action="store_true", help="print the README's table from the CSV (measures nothing)")
    parser.add_argument("--readme", action="store_true",
                        help="write the README's table from the CSV into README.md (measures nothing)")
    return parser.parse_args(argv)


def run_sections(names: Sequence[str], quick: bool) -> tuple[list[Row], list[str]]:
    """Run the sections ``names`` in turn, with a line on each as it starts and ends.

    Returns
    -------
    tuple
        The rows of the sections that ran, and a line per section that failed (the others
        still run).
    """
    rows: list[Row] = []
    failed = []
    # The package's progress bars would be timed with the work (and these lines are progress enough).
    previous = os.environ.get(PROGRESS_VARIABLE)
    os.environ[PROGRESS_VARIABLE] = "off"
    try:
        for name in names:
            section_started = time.perf_counter()
            print(f"{name}: running ...", flush=True)
            try:
                rows += SECTIONS[name].run(quick)
            except Exception as error:  # reported with the table; the suite then exits with 1
                failed.append(f"{name}: {type(error).__name__}: {error}")
                print(f"{name}: FAILED: {error}", flush=True)
                continue
            print(f"{name}: {time.perf_counter() - section_started:.0f} s", flush=True)
    finally:
        if previous is None:
            del os.environ[PROGRESS_VARIABLE]
        else:
            os.environ[PROGRESS_VARIABLE] = previous
    return rows, failed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite as the command line says; the exit status (0: every section ran)."""
    arguments = parse_arguments(argv)
    if arguments.markdown or arguments.readme:
        rows, machine = read_csv(arguments.csv or RESULTS)
        text = markdown(rows, machine)
        if arguments.readme:
            update_readme(text)
        else:
            print(text)
        return 0
    names = arguments.section or list(SECTIONS)
    started = time.perf_counter()
    rows, failed = run_sections(names, arguments.quick)
    duration = time.perf_counter() - started
    print()
    print(format_text(rows))
    print(f"\n{len(rows)} rows, {duration / 60:.1f} min")
    if failed:
        print("not written: these sections failed:\n  " + "\n  ".join(failed), flush=True)
        return 1
    full_run = not arguments.quick and arguments.section is None
    path = arguments.csv or (RESULTS if full_run else None)
    if path is not None:
        machine = describe_machine() | {"duration_s": f"{duration:.0f}", "quick": str(arguments.quick)}
        write_csv(rows, path, machine)
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
