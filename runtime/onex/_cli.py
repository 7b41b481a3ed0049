"""The ``onex`` command group and what its commands share: settings from flags, output formats, one-line errors.

The commands live in ``onex.cli`` (contracts, running, stamping) and ``onex._cli_operate`` (what an operator reads:
``trace``, ``ps``, ``workflows``, ``aggregates``, ``config``, ``dlq``); ``onex.cli`` assembles them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.text import Text

from onex import __version__
from onex._render import PIPE_WIDTH
from onex.contracts import (
    ContractSet,
    load_contracts,
)
from onex.exceptions import BusError, ContractError, OnexError
from onex.logs import configure as configure_logs
from onex.settings import Settings, database_path, redact_url
from onex.store import MAX_OFFSET

if TYPE_CHECKING:
    from onex.store import Store

T = TypeVar("T")
# Not on a terminal (a log file, a pipe), stderr gets the width stdout gets there: no line folded, no table cell cut.
err = Console(
    stderr=True, highlight=False, width=None if sys.stderr is not None and sys.stderr.isatty() else PIPE_WIDTH
)


def _run(coro: Coroutine[Any, Any, T], settings: Settings) -> T:
    """``coro`` to its end on the event loop the settings name (``ONEX_EVENT_LOOP``); a missing uvloop asked for by
    name is a usage error (exit 2)."""
    from onex.runtime import event_loop_factory, run_main

    try:
        event_loop_factory(settings.event_loop)
    except OnexError as exc:
        coro.close()  # never awaited: no warning that it was not
        _fail(str(exc), 2)
    return run_main(coro, event_loop=settings.event_loop, shutdown_timeout_s=settings.shutdown_timeout_s)


def _fail(message: str, code: int = 1) -> NoReturn:
    # One line, never folded at the terminal's width, and the message taken literally (not as rich markup).
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    sys.exit(code)


def _from_store(settings: Settings, call: Callable[[Store], Awaitable[T]], *, create: bool = False) -> T:
    """``call(store)`` on the settings' store, opened around it; an ``OnexError`` is one line on stderr, exit 1. A
    SQLite file that does not exist is such an error unless ``create``: a command that reads leaves none behind."""
    from onex.stores import store_for  # imported when a command reads the store, not by every ``onex`` start

    async def main_() -> T:
        async with store_for(settings, create=create) as s:
            return await call(s)

    try:
        return _run(main_(), settings)
    except OnexError as exc:
        _fail(str(exc))


STORE_SCHEMES = ("sqlite:", "postgresql:", "postgres:")
BUS_SCHEMES = ("memory:", "kafka:")


def _check_store(url: str) -> None:
    """ValueError, one line naming ``url``, for a store URL its store would refuse only once opened: a SQLite URL
    without a path, a PostgreSQL one whose host, port or settings do not parse (asyncpg raises a bare ValueError)."""
    if url.startswith("sqlite:"):
        database_path(url)  # its messages name the URL
        return
    from onex._postgres import PostgresSettings

    try:
        PostgresSettings.from_url(url)  # the settings in its query; an unclosed [ of an IPv6 address
        for host in urlsplit(url).netloc.rpartition("@")[2].split(","):  # asyncpg takes HOST:PORT,HOST:PORT
            parts = urlsplit(f"//{host}")
            _ = parts.hostname, parts.port  # a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ValueError(f"store URL {redact_url(url)!r}: {exc}") from None


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    return _settings_with_sources(ctx, **flags)[0]


def _settings_with_sources(ctx: click.Context, **flags: Any) -> tuple[Settings, dict[str, str]]:
    """The settings (and where each came from); a malformed one is a usage error, never a traceback later."""
    root = ctx.obj.get("root") if ctx.obj else None
    try:
        settings, sources = Settings.load_with_sources(root=root, **flags)
    except ValueError as exc:  # a setting that is not a number where one is needed
        _fail(str(exc), code=2)
    if not settings.store.startswith(STORE_SCHEMES):
        _fail(
            f"unsupported store URL {redact_url(settings.store)!r}: expected sqlite:///PATH or postgresql://...", code=2
        )
    try:  # its path, host and port too, as the store reads them (it opens only when a command needs it)
        _check_store(settings.store)
    except ValueError as exc:
        _fail(str(exc), code=2)
    if not settings.bus.startswith(BUS_SCHEMES):
        _fail(f"unsupported bus URL {settings.bus!r}: expected memory:// or kafka://HOST:PORT", code=2)
    if settings.bus.startswith("kafka:"):  # its parameters too, as the bus reads them (it connects only when started)
        from onex._kafka import KafkaBus

        try:
            KafkaBus.from_url(settings.bus)
        except BusError as exc:
            _fail(str(exc), code=2)
    # What the nodes a command hosts (stamp, publish, dlq replay) and the bus clients log, in `onex run`'s format;
    # without a handler Python printed bare messages. A one-shot command's default is warnings: its nodes' starts,
    # readiness and summaries would bury its report (`onex run` logs at the settings' level, info unless set).
    level = settings.log_level if sources.get("log_level", "default") != "default" else "warning"
    configure_logs(level, settings.log_format)
    return settings, sources


# --- output: every command that prints a table takes -o, rendered here -------------------------------------------


def _output_option(*formats: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    choices = ("table", "json", *formats)
    return click.option(
        "-o",
        "--output",
        type=click.Choice(choices),
        default="table",
        show_default=True,
        help=f"{', '.join(choices)}: JSON for scripts" + (" (jsonl: one object a line)" if formats else "") + ".",
    )


# The most rows a listing is asked for (--limit, tail's --max): beyond any table, and an int64 on every store; a
# bigger number overflowed SQLite's integers (a traceback) and PostgreSQL's (exit 1, not a usage error).
MAX_ROWS: Final = MAX_OFFSET
ROWS = click.IntRange(min=1, max=MAX_ROWS)


class Seconds(click.ParamType[float]):
    """A number of seconds, more than 0 and finite: every float option of the CLI (``--timeout``).

    Not ``click.FloatRange(min=0, min_open=True)``: every comparison with NaN is false, so it let ``nan`` through to
    a traceback, and ``inf`` (no deadline at all) is what leaving the option out means where it means anything.
    """

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float) and math.isfinite(value) and value > 0:
            return value  # a default
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a number of seconds more than 0 (and finite)", param, ctx)
        return seconds


SECONDS = Seconds()

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _since(text: str) -> datetime:
    """``10m``, ``2h``, ``30s``, ``1d`` ago, or an ISO 8601 time (UTC when it names no zone); BadParameter for a
    duration reaching back before the year 1 (``99999999999d``), which neither ``timedelta`` nor ``datetime`` holds."""
    match = _DURATION.match(text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        try:
            return datetime.now(UTC) - timedelta(seconds=float(match.group(1)) * unit)
        except OverflowError:
            raise click.BadParameter(f"{text!r} reaches back before the year 1") from None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration (10m, 2h, 30s, 1d) nor an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


SIGINT_STATUS: Final = 130  # 128 + SIGINT: what a shell reports of a command Ctrl-C ended
SIGTERM_STATUS: Final = 143  # 128 + SIGTERM


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """The exit status of a command ``exc`` interrupted: 143 after SIGTERM, 130 after Ctrl-C.

    ``onex.runtime.run_main`` turns SIGTERM into the KeyboardInterrupt Ctrl-C raises, so that both drain alike, and
    raises it ``from None``; asyncio's runner raises Ctrl-C's in the handling of the cancellation it caused.
    """
    return SIGTERM_STATUS if exc.__suppress_context__ and exc.__cause__ is None else SIGINT_STATUS


def _exist(paths: Sequence[Path]) -> None:
    """A PATH that does not exist is a usage error, said as such (not a file that vanished while running)."""
    for path in paths:
        if not os.path.lexists(path):
            _fail(f"{path}: no such file or directory", code=2)


def _contracts(settings: Settings, *, check_implementations: bool) -> ContractSet:
    try:
        return load_contracts(settings.root, check_implementations=check_implementations)
    except ContractError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        _fail(f"{len(exc.issues)} problem(s) in the contracts under {settings.root}; run `onex validate`")


class _Onex(click.Group):
    """The ``onex`` group: a usage error is one line on stderr (what, and where to look) and exit status 2, instead
    of click's three lines; everything else as click does it."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        with _logging_restored():  # for a caller in the same process (click's CliRunner): its logging as it was
            return self._main(*args, **kwargs)

    def _main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            returned = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # `onex`, `onex db`: the help, as git does
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "onex"
            click.echo(f"{path}: {exc.format_message()} (see '{path} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            click.echo("Aborted!", err=True)
            # Interrupted: the status a shell gives a process a signal ended (128 + its number), not 1, which says
            # "a failure was found". An Abort of click's own (a prompt's) is 1, as click exits.
            interrupt = exc.__cause__
            sys.exit(interrupted_status(interrupt) if isinstance(interrupt, KeyboardInterrupt) else 1)
        # Without standalone mode click returns the code a command exited with (ctx.exit), or what it returned.
        sys.exit(returned if isinstance(returned, int) else 0)


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """The root logger's handlers and level, and the ``onex`` logger's level, put back as they were afterwards (the
    commands configure them: ``_settings_with_sources``)."""
    root, ours = logging.getLogger(), logging.getLogger("onex")
    handlers, levels = list(root.handlers), (root.level, ours.level)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        ours.setLevel(levels[1])


@click.group(cls=_Onex, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="ONEX_ROOT",
    help="Project root holding contracts/ and subcontracts/ (default: nearest above the cwd).",
)
@click.version_option(__version__, prog_name="onex")
@click.pass_context
def main(ctx: click.Context, root: Path | None) -> None:
    """Run contract-driven ONEX nodes: validate contracts, host nodes, stamp and verify files."""
    ctx.ensure_object(dict)
    ctx.obj["root"] = str(root) if root else None
