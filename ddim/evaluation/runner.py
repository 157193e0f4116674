"""The one experiment runner: a table is a definition (`Table`), and `run_table` does the rest.

check the plan of every cell -> prepare (metrics, reference data) -> resume from out/<name>.json and
out/<name>.csv -> compute the missing cells with a progress bar, rewriting the CSV atomically after each ->
out/<name>.md -> out/<name>.png (matplotlib only here, imported lazily by the definition's plot).

A rerun with the same settings reuses the finished cells, also when it asks for more; rows of cells it does not
ask for stay in the CSV for a later run. A table that is not `resumable` (timings) refuses an existing CSV
unless overwrite.
"""

from __future__ import annotations

import csv
import io
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ddim.errors import OutputExistsError
from ddim.io import write_text_atomic
from ddim.runs import open_run

__all__ = ["Table", "run_table", "read_csv", "write_csv", "fmt", "columns_by_s", "optional_float"]


class Table(ABC):
    """A table as a definition: its cells, how to compute one, its CSV columns, its markdown and its plot.

    Subclasses set `name` (the file stem of out/<name>.csv, .md, .png, .json), `fields` (the CSV columns, in
    order), `key_fields` (the columns that name a cell: a cell is the tuple of their values) and `types` (a
    converter per column, to read the CSV back), and implement `cells`, `compute`, `markdown` and `plot`.
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]
    key_fields: ClassVar[tuple[str, ...]]
    types: ClassVar[dict[str, Callable[[str], Any]]] = {}
    resumable: ClassVar[bool] = True

    @abstractmethod
    def cells(self) -> Sequence[tuple]:
        """The cells asked for, in row order (tuples of the `key_fields` values)."""

    def check(self) -> None:
        """Refuse bad input for every cell (the sampler's plan, ...) before anything is computed or written."""

    def prepare(self) -> None:
        """Costly setup shared by the cells (a metric's reference statistics, a warm-up), after `check`."""

    def settings(self) -> dict[str, Any]:
        """What a rerun must match to reuse this folder's cells (the manifest out/<name>.json)."""
        return {}

    @abstractmethod
    def compute(self, cell: tuple) -> dict[str, Any]:
        """One cell's row (a value for each of `fields`)."""

    def describe(self, row: dict[str, Any]) -> str:
        """One progress line for a finished row."""
        return f"{self.name}: " + ", ".join(f"{k} {row[k]}" for k in self.key_fields)

    @abstractmethod
    def markdown(self, rows: list[dict[str, Any]]) -> str:
        """The table as markdown (out/<name>.md)."""

    @abstractmethod
    def plot(self, rows: list[dict[str, Any]], path: Path) -> None:
        """The rows as a PNG at path (matplotlib imported here, not at module level)."""

    def key(self, row: dict[str, Any]) -> tuple:
        return tuple(row[k] for k in self.key_fields)

    def parse(self, row: dict[str, str]) -> dict[str, Any]:
        """A CSV row (strings) as the row `compute` gave."""
        return {k: self.types.get(k, str)(row.get(k, "")) for k in self.fields}


def run_table(table: Table, out: str | Path | None = None, overwrite: bool = False, progress: bool = True
              ) -> list[dict[str, Any]]:
    """The rows of `table`'s cells, in cell order; with `out`, also out/<name>.csv, .md, .png and .json."""
    table.check()
    cells = list(table.cells())
    out = Path(out) if out is not None else None
    csv_path = out / f"{table.name}.csv" if out is not None else None
    if csv_path is not None and not table.resumable and csv_path.exists() and not overwrite:
        raise OutputExistsError(f"{csv_path} exists; pass --overwrite (overwrite=True) to compute it again")
    table.prepare()
    done: dict[tuple, dict] = {}
    if out is not None:
        done = {table.key(r): r for r in map(table.parse, _start(out, table, overwrite))}
    asked = set(cells)
    others = [r for k, r in done.items() if k not in asked]       # kept in the CSV for a later rerun
    from tqdm.auto import tqdm
    bar = tqdm(total=sum(c not in done for c in cells), desc=table.name, unit="cell", disable=not progress)
    rows: list[dict] = []
    with bar:
        for cell in cells:
            if cell in done:
                rows.append(done[cell])
                line = table.describe(rows[-1]) + " (reused)"
            else:
                rows.append(table.compute(cell))
                bar.update()
                line = table.describe(rows[-1])
            if progress:
                bar.write(line)
            if out is not None:
                write_csv(out / f"{table.name}.csv", others + rows, table.fields)
    if out is not None:
        write_text_atomic(out / f"{table.name}.md", table.markdown(rows))
        table.plot(rows, out / f"{table.name}.png")
    return rows


def _start(out: Path, table: Table, overwrite: bool) -> list[dict[str, str]]:
    """Write the manifest out/<name>.json (see `ddim.runs.open_run`); the CSV rows of an earlier run with the
    same settings, or [] for a fresh one."""
    csv_path = out / f"{table.name}.csv"
    resume = open_run(out, f"{table.name}.json", table.settings(), overwrite or not table.resumable,
                      f"{table.name} run", exclusive=False)
    return read_csv(csv_path) if resume and csv_path.exists() else []


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict], fields: Sequence[str]) -> None:
    """The rows as CSV with these columns, written atomically (a crash leaves the previous file)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    write_text_atomic(path, buf.getvalue())


def fmt(x: float) -> str:
    """Table numbers: two decimals as in the paper, one from 100 up, 3 significant digits below 1."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def columns_by_s(rows: list[dict], name: str, cells: list[str]) -> list[str]:
    """A one-row markdown table with one column per S, the paper's layout: header, rule, the row."""
    return ["| S | " + " | ".join(str(r["steps"]) for r in rows) + " |", "|---|" + "---:|" * len(rows),
            f"| {name} | " + " | ".join(cells) + " |"]


def optional_float(s: str) -> float | str:
    """A CSV number that may be empty (a row to which the column does not apply)."""
    return float(s) if s not in ("", None) else ""
