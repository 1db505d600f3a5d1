"""The suite's one table: its rows, the CSV it is saved as, and the text and Markdown it is shown as.

Every section returns :class:`Row` objects; :func:`write_csv` and :func:`read_csv` store them
(``benchmarks/results.csv`` holds the latest full run) together with :func:`describe_machine`'s
record of where they were measured (the same name with ``.json``). :func:`format_text` prints
the table as the suite measured it; :func:`format_markdown` turns a stored table into the
README's section, one small table per section with the models (or thread counts) as columns.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

COLUMNS = ("section", "model", "case", "threads", "value", "unit", "note")

# A note is a list of remarks joined by this separator (not "; ", which the package's error
# messages use): Markdown shows the remarks every row of a section shares once under its
# table, and the others as footnotes.
NOTE_SEPARATOR = " · "

NOT_APPLICABLE = "not applicable"

# How many decimals each unit deserves: ratios (units "× ...") are judged to a hundredth, rates
# and memory in whole units.
_DECIMALS = {"cores": 2, "ms": 1, "s": 2, "images/s": 0, "inputs/s": 0, "MB": 0}


@dataclass(frozen=True)
class Row:
    """One measurement.

    Attributes
    ----------
    section
        The suite's section that measured it (see ``benchmarks.run.SECTIONS``).
    model
        The network it ran on (a zoo name, or the name of the Keras model).
    case
        What was measured, for example a method's name or ``"gradient, batch 256"``.
    threads
        TensorFlow's intra-op thread count during the measurement.
    value
        The number, or ``None`` when the case does not apply to the model (``note`` says why).
    unit
        The value's unit, for example ``"× gradient"`` or ``"images/s"``.
    note
        Remarks joined by :data:`NOTE_SEPARATOR`: how the value was obtained, or why there is none.
    """

    section: str
    model: str
    case: str
    threads: int
    value: float | None
    unit: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.value is None:
            if not any(remark.startswith(NOT_APPLICABLE) for remark in self.remarks()):
                raise ValueError(f"a row without a value needs a remark that starts with {NOT_APPLICABLE!r}: {self}")
        elif not math.isfinite(self.value) or self.value <= 0:
            raise ValueError(f"a measured value must be finite and positive, got {self.value!r} in {self}")

    def remarks(self) -> list[str]:
        """The note split into its remarks (empty for no note)."""
        return [part for part in self.note.split(NOTE_SEPARATOR) if part]


def join_remarks(*remarks: str) -> str:
    """The note made of ``remarks`` (empty ones left out)."""
    return NOTE_SEPARATOR.join(remark for remark in remarks if remark)


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an ``s`` unless the count is 1: ``"3 rounds"``, ``"1 round"``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_value(value: float | None, unit: str) -> str:
    """``value`` rounded as its unit deserves, with thousands separators; ``"n/a"`` for ``None``."""
    if value is None:
        return "n/a"
    return f"{value:,.{_DECIMALS.get(unit, 2 if unit.startswith('×') else 3)}f}"


# --------------------------------------------------------------------------------------------
# Where it was measured
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The processor's name from ``/proc/cpuinfo`` (Linux), or what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """The number of CPUs this process may run on (what TensorFlow's default thread pools use)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_machine() -> dict[str, str]:
    """The machine and software of a run: CPU model, usable cores, TensorFlow, Keras, NumPy and
    Python versions, the operating system, and the date (UTC)."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        "cpu": cpu_model(),
        "cores": str(usable_cores()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def machine_path(csv_path: Path) -> Path:
    """Where the machine record of the table at ``csv_path`` is kept: the same name, ``.json``."""
    return Path(csv_path).with_suffix(".json")


def write_csv(rows: Iterable[Row], path: Path, machine: dict[str, str]) -> None:
    """Save ``rows`` as a CSV with the header :data:`COLUMNS` (an empty value for a case that
    does not apply), and ``machine`` next to it (:func:`machine_path`)."""
    path = Path(path)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for row in rows:
            value = "" if row.value is None else repr(float(row.value))
            writer.writerow([row.section, row.model, row.case, row.threads, value, row.unit, row.note])
    machine_path(path).write_text(json.dumps(machine, indent=2) + "\n")


def read_csv(path: Path) -> tuple[list[Row], dict[str, str]]:
    """The rows and the machine record saved by :func:`write_csv`."""
    path = Path(path)
    with path.open(newline="") as file:
        reader = csv.reader(file)
        header = tuple(next(reader, ()))
        if header != COLUMNS:
            raise ValueError(f"{path} is not a benchmark table: its header is {header}, expected {COLUMNS}")
        rows = [
            Row(section, model, case, int(threads), float(value) if value else None, unit, note)
            for section, model, case, threads, value, unit, note in reader
        ]
    machine = json.loads(machine_path(path).read_text()) if machine_path(path).exists() else {}
    return rows, machine


# --------------------------------------------------------------------------------------------
# Text and Markdown
# --------------------------------------------------------------------------------------------


def format_text(rows: Sequence[Row]) -> str:
    """The rows as one fixed-width table, every column of :data:`COLUMNS`, notes in full."""
    cells = [list(COLUMNS)] + [
        [row.section, row.model, row.case, str(row.threads), format_value(row.value, row.unit), row.unit, row.note]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS) - 1)]
    right_aligned = {COLUMNS.index("threads"), COLUMNS.index("value")}
    lines = []
    for line in cells:
        padded = [
            cell.rjust(width) if i in right_aligned else cell.ljust(width) for i, (cell, width) in enumerate(zip(line, widths))
        ]
        lines.append("  ".join(padded + [line[-1]]).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths) + "  ----")
    return "\n".join(lines)


def _column_name(row: Row, by: str) -> str:
    if by == "threads":
        return plural(row.threads, "thread")
    return str(getattr(row, by))


def format_section_markdown(rows: Sequence[Row], *, title: str, by: str = "model") -> str:
    """One section's rows as a Markdown table: a line per case (with its unit), a column per
    value of the row field ``by`` (``"model"`` or ``"threads"``). The remarks every row shares
    are written once under the table; the others become numbered footnotes."""
    if by not in {field.name for field in fields(Row)}:
        raise ValueError(f"by must name a field of Row, got {by!r}")
    columns = list(dict.fromkeys(_column_name(row, by) for row in rows))
    lines_order = list(dict.fromkeys((row.case, row.unit) for row in rows))
    shared = [remark for remark in rows[0].remarks() if all(remark in row.remarks() for row in rows)] if rows else []
    footnotes: dict[str, int] = {}
    table: dict[tuple[str, str], dict[str, str]] = {line: {} for line in lines_order}
    for row in rows:
        cell = format_value(row.value, row.unit)
        marks = []
        for remark in row.remarks():
            if remark not in shared:
                marks.append(footnotes.setdefault(remark, len(footnotes) + 1))
        if marks:
            cell += " " + "".join(f"[{mark}]" for mark in marks)
        table[(row.case, row.unit)][_column_name(row, by)] = cell
    out = [f"**{title}**", "", "| case | unit | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for (case, unit), cells in table.items():
        out.append(f"| {case} | {unit} | " + " | ".join(cells.get(column, "") for column in columns) + " |")
    notes = [_sentence(remark) for remark in shared]
    notes += [f"[{number}] {_sentence(remark)}" for remark, number in footnotes.items()]
    if notes:
        out += [""] + ["  \n".join(notes)]
    return "\n".join(out)


def _sentence(remark: str) -> str:
    return remark[0].upper() + remark[1:] + ("" if remark.endswith(".") else ".")


def format_machine(machine: dict[str, str]) -> str:
    """One sentence: where and when the table was measured, and how long the suite took."""
    if not machine:
        return "Measured on an unrecorded machine."
    duration = machine.get("duration_s")
    took = f"; the suite took {float(duration) / 60:.1f} min" if duration else ""
    if machine.get("quick") == "True":
        took += " (a --quick run: too few repeats to compare)"
    return (
        f"Measured on {machine['date']}: {machine['cpu']}, {machine['cores']} cores, {machine['system']}; "
        f"TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, NumPy {machine['numpy']}, "
        f"Python {machine['python']}{took}."
    )

