"""How the CLI draws what it found: tables (rich) or JSON on stdout, and the progress bar of ``onex stamp``.

``onex.client`` returns the reports as data (``StampReport``, ``VerifyReport``; ``-o json`` prints their
``to_dict()``); only the CLI imports this module, so using the client API pulls in no terminal code. ``emit`` is
how every table command prints: a table, a JSON array or JSON lines (``-o table|json|jsonl``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from onex.client import StampReport, VerifyReport


# Piped, stdout has no width: rich would fold and cut table cells at 80 columns, and a script reading the table
# would get partial ids and paths. So a pipe gets a width no row reaches, and every value whole.
PIPE_WIDTH = 100_000
console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: times in ISO 8601, ids and paths as text, dataclasses as objects."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, uuid.UUID | Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value


def cell(value: Any) -> Text:
    """``value`` as a table cell on one line, taken literally (not as rich markup); ``None`` is empty.

    A text holding line breaks (a pydantic error is several lines) would split its row over several lines, and a
    script reading the table line by line would take each for a row: its whitespace is collapsed to single spaces.
    Other text is left as it is (a path's double space is part of the path). ``-o json`` keeps the whole text.
    """
    text = "" if value is None else str(value)
    return Text(text if text.isprintable() else " ".join(text.split()))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(plain(data), indent=2))


def show(table: Table, on: Console | None = None) -> None:
    """``table`` on ``on`` (default stdout's console); not on a terminal, a title wider than the table is printed
    whole on a line of its own above it.

    rich folds a table's title at the table's width, whatever the console's, so a piped title naming a long store
    URL or path was split over lines where a script looked for it whole. On a terminal it folds as rich folds it.
    """
    target = on or console
    title = table.title
    if title is not None and not target.is_terminal:
        text = title if isinstance(title, Text) else Text.from_markup(title)
        if text.cell_len > target.measure(table).maximum:
            table.title = None
            text.stylize("table.title")
            target.print(text, soft_wrap=True)
    target.print(table)


def emit(
    output: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str,
    columns: Mapping[str, Callable[[Mapping[str, Any]], Any]] | None = None,
    page: Mapping[str, Any] | None = None,
) -> None:
    """``rows`` as a table (``columns``: header -> cell, default every key), a JSON array, or JSON lines.

    ``page``, for a paged list (one whose table says "N of M"): with ``-o json`` the rows are the ``items`` of an
    object holding ``page``'s fields too (``total``, ``limit``, ``offset``), the shape of the HTTP API's pages, so
    that the JSON says what the table does; ``-o jsonl`` is the rows, one a line, as for every list.
    """
    if output == "json":
        emit_json(list(rows) if page is None else {"items": list(rows), **page})
    elif output == "jsonl":
        for row in rows:
            click.echo(json.dumps(plain(row)))
    else:
        cells = columns or {key: getter(key) for key in (rows[0] if rows else {})}
        table = Table(title=Text(title))  # literally: a store URL or a path may hold [brackets]
        for header in cells:
            table.add_column(header)
        for row in rows:
            table.add_row(*(cell(value(row)) for value in cells.values()))
        show(table)


def getter(key: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda row: row[key]


def duration(seconds: float | None) -> str:
    """A duration as an operator reads it: 42s, 3m05s, 2h07m, 3d04h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def compact(value: Any) -> str:
    """A JSON value on one line, keys sorted (as the store keys a group)."""
    return json.dumps(plain(value), separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def window_span(row: Mapping[str, Any]) -> str:
    start, end = row["window_start"], row["window_end"]
    if start is None:
        return "running"  # an aggregation without windows: a running total
    return f"{start.isoformat(timespec='seconds')}\N{EN DASH}{end.isoformat(timespec='seconds') if end else ''}"


class StampProgress:
    """The progress bar of ``onex stamp`` on ``console``, fed by ``StampRun.run(on_progress=...)``.

    A context manager around the run, drawing only on a terminal; the bar appears at the first report (once the run
    is connected: nothing is drawn while it connects) and is removed at the end. Shows outcomes in, of the files
    submitted once all are, and the rate since the bar was created.
    """

    def __init__(self, console: Console) -> None:
        self._bar = Progress(
            TextColumn("[bold]stamping"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task = self._bar.add_task("stamp", total=None, rate="")
        self._started = time.monotonic()
        self._shown = False
        # Off a terminal (a log file, a pipe) nothing is drawn: a transient bar there left a lone line break.
        self._drawn = console.is_terminal

    def __call__(self, done: int, total: int | None) -> None:
        if not self._drawn:
            return
        if not self._shown:
            self._shown = True
            self._bar.start()
        if done:
            rate = done / max(time.monotonic() - self._started, 1e-9)
            self._bar.update(self._task, completed=done, total=total, rate=f"{rate:,.0f} files/s")
        else:
            self._bar.update(self._task, completed=done, total=total)

    def __enter__(self) -> StampProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._shown:
            self._bar.stop()


def print_stamp_report(report: StampReport, console: Console) -> None:
    """The tables of ``onex stamp``: the problems, the counts under a headline, the aggregates per namespace."""
    if report.problems:
        table = Table(title="problems")
        for column in ("status", "path", "correlation id", "reason"):
            table.add_column(column, overflow="fold")
        for p in report.problems:
            table.add_row(p.status, cell(p.path), str(p.correlation_id or "-"), cell(p.reason))
        show(table, console)
    files = report.submitted + report.unsubmitted
    if not report.waited:  # --no-wait: what was handed to the deployment, no outcomes
        title = f"submitted {report.submitted} file(s) in {report.elapsed_s:.2f} s, not waiting for the outcomes"
        columns: tuple[str, ...] = ("submitted", "skipped", "failed", "pending")
    elif report.pending:
        elapsed, timeout = f"{report.elapsed_s:.2f} s", f"--timeout {report.timeout_s:g}"
        title = f"{report.pending} of {files} file(s) pending after {elapsed} ({timeout})"
        columns = ("stamped", "unchanged", "skipped", "failed", "pending")
    else:
        title = f"{report.headline()} in {report.elapsed_s:.2f} s"
        columns = ("stamped", "unchanged", "skipped", "failed", "pending")
    if report.busy:
        columns = (*columns[:-1], "busy", columns[-1])
    summary = Table(title=title)
    for column in columns:
        summary.add_column(column, justify="right")
    summary.add_row(*(str(report.submitted if c == "submitted" else report.counts[c]) for c in columns))
    show(summary, console)
    in_flight = report.pending - report.unsubmitted
    if in_flight:
        console.print(
            f"pending: {in_flight} submitted workflow(s) had no outcome in time; the deployment may still "
            "complete them (onex trace CORRELATION_ID)",
            markup=False,
        )
    if report.unsubmitted:
        console.print(
            f"pending: {report.unsubmitted} file(s) were not submitted before the deadline; run onex stamp again "
            "for them",
            markup=False,
        )
    if report.store_error is not None:
        console.print(
            f"the store could not be read ({report.store_error}): no aggregates; the counts above are the "
            "outcomes heard on the bus",
            markup=False,
        )
    elif report.aggregates is not None and not report.aggregates:
        console.print(f"aggregates per namespace (store): none for {report.namespace} yet", markup=False)
    elif report.aggregates:
        agg = Table(title="aggregates per namespace (store)")
        for column in ("namespace", "workflows", "items", "bytes", "unique hashes", "by file type"):
            agg.add_column(column, justify="left" if column in ("namespace", "by file type") else "right")
        for row in report.aggregates:
            by_type = ", ".join(f"{k} {v}" for k, v in sorted(row.aggregation_metadata.get("by_file_type", {}).items()))
            agg.add_row(
                row.namespace,
                str(row.total_workflows_processed),
                str(row.total_items_aggregated),
                str(row.total_size_bytes),
                str(row.unique_file_hashes),
                by_type,
            )
        show(agg, console)


def print_verify_report(report: VerifyReport, console: Console, *, show_all: bool = False) -> None:
    """The tables of ``onex verify``: the files that are not valid (every file with ``show_all``), then the counts."""
    from onex.client import VERIFY_STATUSES

    shown = [r for r in report.results if show_all or r.status != "valid"]
    if shown:
        table = Table(title="verify")
        for column in ("status", "path", "detail"):
            table.add_column(column, overflow="fold")
        style = {"valid": "green", "modified": "red", "unstamped": "yellow", "error": "red", "skipped": "dim"}
        for r in shown:
            detail = r.error or (
                f"stamp {r.expected[:16]}... content {r.actual[:16]}..."
                if r.status == "modified" and r.expected and r.actual
                else ""
            )
            table.add_row(f"[{style[r.status]}]{r.status}[/]", cell(r.path), cell(detail))
        show(table, console)
    summary = Table(title=f"verified {len(report.results) - report.counts['skipped']} file(s)")
    for column in VERIFY_STATUSES:
        summary.add_column(column, justify="right")
    summary.add_row(*(str(report.counts[c]) for c in VERIFY_STATUSES))
    show(summary, console)
