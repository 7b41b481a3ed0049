"""The ``onex`` command line.

Settings come from flags, then ``ONEX_*`` environment variables, then defaults. Exit codes: 0 ok, 1 a failure was
found (invalid contract, modified file, failed workflow), 2 usage error, 3 timed out with work pending (``onex
stamp``: files without an outcome by ``--timeout``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from onex import __version__
from onex.contracts import ContractSet, load_contract, load_contracts, resolve_implementation, schemas
from onex.exceptions import ContractError, OnexError
from onex.fsm import mermaid
from onex.settings import Settings

T = TypeVar("T")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    sys.exit(code)


def _log_to_stderr() -> None:
    """onex's INFO lines (what a starting node waits for: group joins, assignments) to stderr, with a timestamp.

    Other libraries' loggers are left alone: their warnings reach stderr through Python's last-resort handler.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("onex")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    root = ctx.obj.get("root") if ctx.obj else None
    try:
        return Settings.load(root=root, **flags)
    except ValueError as exc:  # a setting that is not a number where one is needed
        _fail(str(exc), code=2)


def _contracts(settings: Settings, *, check_implementations: bool) -> ContractSet:
    try:
        return load_contracts(settings.root, check_implementations=check_implementations)
    except ContractError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        _fail(f"{len(exc.issues)} problem(s) in the contracts under {settings.root}; run `onex validate`")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ONEX_ROOT",
    help="Project root holding contracts/ and subcontracts/ (default: nearest above the cwd).",
)
@click.version_option(__version__, prog_name="onex")
@click.pass_context
def main(ctx: click.Context, root: Path | None) -> None:
    """Run contract-driven ONEX nodes: validate contracts, host nodes, stamp and verify files."""
    ctx.ensure_object(dict)
    ctx.obj["root"] = str(root) if root else None


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Check contracts: YAML, $ref, JSON Schema, FSM and handler checks. Exit 1 if any problem is found.

    Without PATHS every contract and subcontract of the project is checked; a PATH may be a project directory
    (one holding contracts/), a directory of contract files, or a contract file.
    """
    settings = _settings(ctx)
    issues = []
    checked = 0
    targets = list(paths) or [settings.root]
    for target in targets:
        try:
            if not paths or (target / "contracts").is_dir():
                checked += len(load_contracts(target.resolve()).contracts)
            elif target.is_dir():
                # Loaded as a project root it would hold no contracts/ and pass having checked nothing.
                checked += len(load_contracts(settings.root, [target.resolve()]).contracts)
            else:
                load_contract(target, root=settings.root)
                checked += 1
        except ContractError as exc:
            issues.extend(exc.issues)
    for issue in issues:
        click.echo(str(issue))  # one plain line each, never wrapped: editors and grep parse them
    if issues:
        files = len({i.path for i in issues})
        _fail(f"{len(issues)} problem(s) in {files} file(s)")
    console.print(f"[green]ok[/green]: {checked} contract(s) valid")


@main.command()
@click.pass_context
def nodes(ctx: click.Context) -> None:
    """List every node: name, versions, kind, contract and whether its implementation imports."""
    settings = _settings(ctx)
    contracts = _contracts(settings, check_implementations=False)
    table = Table(title=f"nodes in {settings.root}")
    for column in ("node", "version", "kind", "contract", "implementation"):
        table.add_column(column)
    for contract in sorted(contracts.contracts, key=lambda c: (c.name, c.version_tuple)):
        try:
            resolve_implementation(contract, root=settings.root)
            status = "[green]ok[/green]"
        except ContractError as exc:
            status = f"[red]{exc.issues[0].code}[/red]"
        source = (
            contract.source.relative_to(settings.root)
            if contract.source.is_relative_to(settings.root)
            else contract.source
        )
        table.add_row(contract.name, contract.version, contract.node_type.value, str(source), status)
    console.print(table)


@main.command()
@click.argument("node")
@click.option("--version", "node_version", help="Node version (default: the highest).")
@click.pass_context
def graph(ctx: click.Context, node: str, node_version: str | None) -> None:
    """Print NODE's state machine as a Mermaid state diagram."""
    settings = _settings(ctx)
    contracts = _contracts(settings, check_implementations=False)
    try:
        contract = contracts.get(node, node_version)
    except (LookupError, ContractError) as exc:
        _fail(str(exc))
    if contract.subcontracts.fsm is None:
        _fail(f"node {node} {contract.version} has no fsm subcontract")
    click.echo(mermaid(contract.subcontracts.fsm), nl=False)


@main.command()
@click.argument("name", default="contract")
@click.option("--list", "list_", is_flag=True, help="List the schema names.")
def schema(name: str, list_: bool) -> None:
    """Print a JSON Schema (contract or a subcontract type) for editors."""
    available = schemas()
    if list_:
        click.echo("\n".join(sorted(available)))
        return
    if name not in available:
        _fail(f"no schema {name!r}; one of: {', '.join(sorted(available))}", code=2)
    click.echo(json.dumps(available[name], indent=2))


@main.command()
@click.option("--node", "node_names", multiple=True, help="Host only these nodes (repeatable). Default: all.")
@click.option("--version", "node_version", help="Node version (default: the highest).")
@click.option("--bus", help="memory:// (default) or kafka://HOST:PORT[,HOST:PORT]. Env: ONEX_BUS.")
@click.option("--store", help="sqlite:///PATH (default .onex/onex.db) or postgresql://... Env: ONEX_STORE.")
@click.option(
    "--http",
    "http_address",
    metavar="HOST:PORT",
    help="Also serve the HTTP stamping API, e.g. 127.0.0.1:8053 (bearer key from ONEX_API_KEY). Env: ONEX_HTTP.",
)
@click.pass_context
def run(
    ctx: click.Context,
    node_names: tuple[str, ...],
    node_version: str | None,
    bus: str | None,
    store: str | None,
    http_address: str | None,
) -> None:
    """Host nodes in this process until SIGINT/SIGTERM, then drain and stop.

    With --http the HTTP gateway runs in this process too, next to whatever nodes it hosts; on shutdown it stops
    accepting requests and finishes those in hand before the nodes drain.
    """
    from onex.runtime import Runtime, tune_gc

    settings = _settings(ctx, bus=bus, store=store, http=http_address)
    contracts = _contracts(settings, check_implementations=True)
    for name in node_names:
        try:
            contracts.get(name, node_version)
        except LookupError as exc:
            _fail(f"--node {name!r}: {exc}", code=2)
    sock = None
    if settings.http:
        from onex.http import PREFIX, bind, parse_address, serve

        try:
            parse_address(settings.http)
        except ValueError as exc:
            _fail(str(exc), code=2)
        try:
            sock = bind(settings.http)  # before any node starts, so that a busy port fails at once
        except OnexError as exc:
            _fail(str(exc))
    _log_to_stderr()
    tune_gc()

    async def main_() -> None:
        async with Runtime(settings, nodes=node_names or None, version=node_version, contracts=contracts) as rt:
            table = Table(title=f"onex {__version__}: hosting on {settings.bus}, store {settings.store_url()}")
            for column in ("node", "version", "kind", "node id"):
                table.add_column(column)
            for n in rt.nodes:
                table.add_row(n.contract.name, n.contract.version, n.contract.node_type.value, n.node_id)
            err.print(table)
            if sock is None:
                await rt.run_until_signal(ready=lambda: err.print("running; Ctrl-C drains and stops"))
            else:

                def ready(url: str) -> None:
                    key = "bearer key required" if settings.api_key else "no API key"
                    err.print(f"HTTP API on {url}{PREFIX} ({key}); running; Ctrl-C drains and stops", markup=False)

                await serve(rt, settings, sock=sock, ready=ready)
            err.print("draining...")
        err.print("stopped")

    try:
        _run(main_())
    except OnexError as exc:
        _fail(str(exc))
    finally:
        if sock is not None:
            sock.close()


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rich", is_flag=True, help="Write rich YAML metadata blocks instead of one-line stamps.")
@click.option("--namespace", default="onex.default", show_default=True, help="Namespace the stamps belong to.")
@click.option("--dry-run", is_flag=True, help="Hash and report, change no file.")
@click.option("--exclude", multiple=True, help="gitignore-style pattern to leave out (repeatable).")
@click.option(
    "--bus",
    help="memory:// (default: every node in this process) or kafka://HOST:PORT to submit to a "
    "running deployment. Env: ONEX_BUS.",
)
@click.option("--store", help="sqlite:///PATH (default .onex/onex.db) or postgresql://... Env: ONEX_STORE.")
@click.option(
    "--no-wait",
    is_flag=True,
    help="With a Kafka bus: return once the broker has the requests, without waiting for the outcomes.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds for the whole run: connecting, submitting, waiting for the outcomes, reading the summary. Files "
    "without an outcome by then are reported pending with their correlation ids (exit 3).",
)
@click.pass_context
def stamp(
    ctx: click.Context,
    paths: tuple[Path, ...],
    rich: bool,
    namespace: str,
    dry_run: bool,
    exclude: tuple[str, ...],
    bus: str | None,
    store: str | None,
    no_wait: bool,
    timeout: float,
) -> None:
    """Stamp files: one workflow per file through orchestrator, stamping effect, reducer and database adapter.

    Directories are walked honouring .gitignore/.onexignore; symlinks are never followed out of a root. In process
    only the PATHs given are ever written. A file open in another process is not replaced but reported busy. Ends
    with a summary table listing every file that failed, was busy or is pending, with its correlation id.

    \b
    Exit codes:
      0  every file stamped or unchanged (or, with --no-wait, submitted)
      1  a file failed or was busy (even if others are pending)
      2  usage error
      3  a file is pending: no outcome within --timeout (a deployment may
         still complete it), or not submitted by then
    """
    from onex.client import StampRun
    from onex.runtime import tune_gc

    settings = _settings(ctx, bus=bus, store=store)
    contracts = _contracts(settings, check_implementations=not settings.bus.startswith("kafka:"))
    tune_gc()
    run_ = StampRun(
        settings,
        contracts,
        rich=rich,
        namespace=namespace,
        dry_run=dry_run,
        excludes=exclude,
        wait=not no_wait,
        timeout=timeout,
    )
    try:
        report = _run(run_.run(list(paths), console=err))
    except OnexError as exc:
        _fail(str(exc))
    report.print(console)
    if report.failed or report.busy:
        sys.exit(1)
    if report.pending:
        sys.exit(3)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--exclude", multiple=True, help="gitignore-style pattern to leave out (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="List valid files too, not only problems.")
def verify(paths: tuple[Path, ...], exclude: tuple[str, ...], show_all: bool) -> None:
    """Recompute hashes offline: valid / modified / unstamped per file. Exits 1 if any file is modified."""
    from onex.client import verify_paths

    report = verify_paths(list(paths), excludes=exclude)
    report.print(console, show_all=show_all)
    if report.counts.get("modified", 0) or report.counts.get("error", 0):
        sys.exit(1)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.option("--store", help="sqlite:///PATH or postgresql://... Env: ONEX_STORE.")
@click.pass_context
def upgrade(ctx: click.Context, store: str | None) -> None:
    """Apply pending numbered migrations."""
    from onex.store import open_store

    settings = _settings(ctx.parent or ctx, store=store)

    async def main_() -> list[str]:
        async with open_store(settings.store_url()) as s:
            return await s.upgrade()

    try:
        applied = _run(main_())
    except OnexError as exc:
        _fail(str(exc))
    if applied:
        for name in applied:
            console.print(f"applied {name}")
    else:
        console.print("up to date")


@main.command()
@click.argument("correlation_id", required=False)
@click.option("--latest", is_flag=True, help="Trace the most recently started workflow.")
@click.option("--store", help="sqlite:///PATH or postgresql://... Env: ONEX_STORE.")
@click.pass_context
def trace(ctx: click.Context, correlation_id: str | None, latest: bool, store: str | None) -> None:
    """Print a workflow's steps and FSM transitions from the store (CORRELATION_ID, or --latest)."""
    from onex.store import open_store

    if (correlation_id is None) == (not latest):
        _fail("give a CORRELATION_ID or --latest", code=2)
    try:
        wanted = uuid.UUID(correlation_id) if correlation_id else None
    except ValueError:
        _fail(f"{correlation_id!r} is not a UUID", code=2)
    settings = _settings(ctx, store=store)

    async def main_() -> None:
        async with open_store(settings.store_url()) as s:
            if wanted is None:
                newest = await s.list_workflows(limit=1)
                if not newest:
                    _fail(f"no workflow in {settings.store_url()}")
                cid = newest[0].correlation_id
            else:
                cid = wanted
            workflow = await s.get_workflow(cid)
            if workflow is None:
                _fail(f"no workflow {cid} in {settings.store_url()}")
            steps = await s.list_steps(cid)
            transitions = await s.list_transitions(str(cid))
        summary = Table(title=f"workflow {cid}", show_header=False)
        for key in (
            "workflow_type",
            "current_state",
            "namespace",
            "file_path",
            "file_hash",
            "started_at",
            "completed_at",
            "execution_time_ms",
            "error_message",
        ):
            summary.add_row(key, str(getattr(workflow, key)))
        console.print(summary)
        steps_table = Table(title="steps")
        for column in ("#", "step", "status", "ms", "error"):
            steps_table.add_column(column)
        for st in steps:
            steps_table.add_row(
                str(st.step_order), st.step_name, st.status, str(st.execution_time_ms or ""), st.error_message or ""
            )
        console.print(steps_table)
        tr = Table(title="transitions")
        for column in ("at", "from", "to", "trigger"):
            tr.add_column(column)
        for t in transitions:
            tr.add_row(str(t.created_at), t.from_state or "", t.to_state, t.transition_event)
        console.print(tr)

    try:
        _run(main_())
    except OnexError as exc:
        _fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    main()
