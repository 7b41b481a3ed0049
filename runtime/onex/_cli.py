"""The ``onex`` command group and what its commands share: settings from flags, output formats, one-line errors.

The commands live in ``onex.cli`` (contracts, running, stamping) and ``onex._cli_operate`` (what an operator reads:
``trace``, ``ps``, ``workflows``, ``aggregates``, ``config``, ``dlq``); ``onex.cli`` assembles them.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from onex import __version__
from onex.contracts import (
    ContractSet,
    load_contracts,
)
from onex.exceptions import BusError, ContractError, OnexError
from onex.settings import Settings

if TYPE_CHECKING:
    from onex.store import Store

T = TypeVar("T")
err = Console(stderr=True, highlight=False)


def _run(coro: Coroutine[Any, Any, T], settings: Settings) -> T:
    """``coro`` to its end on the event loop the settings name (``ONEX_EVENT_LOOP``); a missing uvloop asked for by
    name is a usage error (exit 2)."""
    from onex.runtime import event_loop_factory, run_main

    try:
        event_loop_factory(settings.event_loop)
    except OnexError as exc:
        coro.close()  # never awaited: no warning that it was not
        _fail(str(exc), 2)
    return run_main(coro, event_loop=settings.event_loop)


def _fail(message: str, code: int = 1) -> NoReturn:
    # One line, never folded at the terminal's width, and the message taken literally (not as rich markup).
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    sys.exit(code)


def _from_store(settings: Settings, call: Callable[[Store], Awaitable[T]]) -> T:
    """``call(store)`` on the settings' store, opened around it; an ``OnexError`` is one line on stderr, exit 1."""
    from onex.stores import store_for  # imported when a command reads the store, not by every ``onex`` start

    async def main_() -> T:
        async with store_for(settings) as s:
            return await call(s)

    try:
        return _run(main_(), settings)
    except OnexError as exc:
        _fail(str(exc))


STORE_SCHEMES = ("sqlite:", "postgresql:", "postgres:")
BUS_SCHEMES = ("memory:", "kafka:")


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
        _fail(f"unsupported store URL {settings.store!r}: expected sqlite:///PATH or postgresql://...", code=2)
    if not settings.bus.startswith(BUS_SCHEMES):
        _fail(f"unsupported bus URL {settings.bus!r}: expected memory:// or kafka://HOST:PORT", code=2)
    if settings.bus.startswith("kafka:"):  # its parameters too, as the bus reads them (it connects only when started)
        from onex._kafka import KafkaBus

        try:
            KafkaBus.from_url(settings.bus)
        except BusError as exc:
            _fail(str(exc), code=2)
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


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _since(text: str) -> datetime:
    """``10m``, ``2h``, ``30s``, ``1d`` ago, or an ISO 8601 time (UTC when it names no zone)."""
    match = _DURATION.match(text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return datetime.now(UTC) - timedelta(seconds=float(match.group(1)) * unit)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration (10m, 2h, 30s, 1d) nor an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


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
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # Without standalone mode click returns the code a command exited with (ctx.exit), or what it returned.
        sys.exit(returned if isinstance(returned, int) else 0)


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
