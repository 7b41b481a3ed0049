"""The ``onex`` command line.

Settings come from flags, then ``ONEX_*`` environment variables, then defaults. Exit codes: 0 ok, 1 a failure was
found (invalid contract, modified file, failed workflow), 2 usage error, 3 timed out with work pending (``onex
stamp``: files without an outcome by ``--timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from onex import __version__
from onex._render import compact, console, duration, emit, emit_json, getter, plain, window_span
from onex.contracts import (
    Contract,
    ContractSet,
    bundled_schema,
    load_contract,
    load_contracts,
    resolve_implementation,
    schemas,
)
from onex.exceptions import ContractError, OnexError
from onex.fsm import mermaid
from onex.logs import configure as configure_logs
from onex.settings import LOG_FORMATS, LOG_LEVELS, Settings, declarations, redact_url, spelled

T = TypeVar("T")
err = Console(stderr=True, highlight=False)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _fail(message: str, code: int = 1) -> NoReturn:
    # One line, never folded at the terminal's width, and the message taken literally (not as rich markup).
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    sys.exit(code)


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


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Check contracts: YAML, $ref, JSON Schema, FSM and handler checks. Exit 1 if any problem is found.

    Without PATHS every contract and subcontract of the project is checked; a PATH may be a project directory
    (one holding contracts/), a directory of contract files, or a contract file. In a git work tree, a contract that
    changed incompatibly since the last commit without a new major version gets a warning (`onex contract diff`).
    """
    settings = _settings(ctx)
    issues = []
    checked = 0
    targets = list(paths) or [settings.root]
    project: list[Contract] = []
    for target in targets:
        try:
            if not paths or (target / "contracts").is_dir():
                loaded = load_contracts(target.resolve()).contracts
                checked += len(loaded)
                project += loaded if not paths else []
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
    if project:
        from onex.contracts.diff import unversioned_breaks

        try:
            for warning in unversioned_breaks(project, root=settings.root):
                err.print(f"[yellow]warning[/yellow]: {warning}", markup=True, highlight=False)
        except OnexError as exc:  # git missing or failing: the check is advice, validation stands
            err.print(f"warning: could not compare with the committed contracts: {exc}", markup=False)
    console.print(f"[green]ok[/green]: {checked} contract(s) valid")


@main.group()
def contract() -> None:
    """Work with contract versions."""


@contract.command("diff")
@click.argument("old")
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_output_option()
@click.pass_context
def contract_diff(ctx: click.Context, old: str, new: Path, output: str) -> None:
    """List every change from OLD to NEW and whether it breaks what runs or is stored; exit 1 if one does.

    OLD is a contract file, or git:REF for NEW as committed at REF (git:HEAD, git:main~3). Breaking: an event no
    longer consumed or published, a payload field removed or narrowed, a required field added, an FSM state removed
    or a trigger removed, another node kind. See docs/contracts.md.
    """
    from onex.contracts.diff import diff_files, is_breaking

    settings = _settings(ctx)
    if not old.startswith("git:") and not Path(old).is_file():
        raise click.BadParameter(f"{old!r} is neither a contract file nor git:REF", param_hint="OLD")
    try:
        changes = diff_files(old, new, root=settings.root)
    except ContractError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        _fail(f"{len(exc.issues)} problem(s) loading the contracts")
    except OnexError as exc:
        _fail(str(exc))
    breaking = is_breaking(changes)
    if output == "json":
        emit_json({"breaking": breaking, "changes": [c.to_dict() for c in changes]})
    elif not changes:
        console.print(f"no changes from {old} to {new}", markup=False)
    else:
        emit(output, [c.to_dict() for c in changes], title=f"{old} -> {new}")
        verdict = (
            f"[red]breaking[/red]: {sum(c.verdict == 'breaking' for c in changes)} change(s)"
            if breaking
            else "[green]compatible[/green]"
        )
        console.print(f"{verdict} ({len(changes)} change(s) in all)")
    if breaking:
        sys.exit(1)


@main.command()
@_output_option()
@click.pass_context
def nodes(ctx: click.Context, output: str) -> None:
    """List every node: name, versions, kind, contract and whether its implementation imports."""
    settings = _settings(ctx)
    contracts = _contracts(settings, check_implementations=False)
    rows = []
    for contract in sorted(contracts.contracts, key=lambda c: (c.name, c.version_tuple)):
        try:
            resolve_implementation(contract, root=settings.root)
            status = "ok"
        except ContractError as exc:
            status = exc.issues[0].code
        source = (
            contract.source.relative_to(settings.root)
            if contract.source.is_relative_to(settings.root)
            else contract.source
        )
        rows.append(
            {
                "node": contract.name,
                "version": contract.version,
                "kind": contract.node_type.value,
                "contract": str(source),
                "implementation": status,
            }
        )
    emit(output, rows, title=f"nodes in {settings.root}")


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
    except (LookupError, ContractError) as exc:  # a NODE or --version that does not exist: the user's to fix
        _fail(str(exc), code=2)
    if contract.subcontracts.fsm is None:
        _fail(f"node {node} {contract.version} has no fsm subcontract")
    click.echo(mermaid(contract.subcontracts.fsm), nl=False)


@main.command()
@click.argument("name", default="contract")
@click.option("--list", "list_", is_flag=True, help="List the schema names.")
def schema(name: str, list_: bool) -> None:
    """Print a JSON Schema (contract or a subcontract type) for editors: one self-contained document, which
    accepts `{$ref: file}` wherever a subcontract may stand."""
    available = schemas()
    if list_:
        click.echo("\n".join(sorted(available)))
        return
    if name not in available:
        _fail(f"no schema {name!r}; one of: {', '.join(sorted(available))}", code=2)
    click.echo(json.dumps(bundled_schema(name), indent=2))


@main.command()
@click.option("--node", "node_names", multiple=True, help="Host only these nodes (repeatable). Default: all.")
@click.option(
    "--no-nodes",
    is_flag=True,
    help="Host no node: only the HTTP gateway (needs --http and a Kafka bus, where a deployment does the work).",
)
@click.option("--version", "node_version", help="Node version (default: the highest).")
@click.option("--bus", help="memory:// (default) or kafka://HOST:PORT[,HOST:PORT]. Env: ONEX_BUS.")
@click.option("--store", help="sqlite:///PATH (default .onex/onex.db) or postgresql://... Env: ONEX_STORE.")
@click.option(
    "--http",
    "http_address",
    metavar="HOST:PORT",
    help="Also serve the HTTP stamping API, e.g. 127.0.0.1:8053 (bearer key from ONEX_API_KEY). Env: ONEX_HTTP.",
)
@click.option(
    "--metrics",
    "metrics_address",
    metavar="HOST:PORT",
    help="Serve /healthz, /readyz and Prometheus /metrics, e.g. 0.0.0.0:9464. Env: ONEX_METRICS.",
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), help="Env: ONEX_LOG_LEVEL (info).")
@click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), help="text or json (one object a line). Env: ONEX_LOG_FORMAT."
)
@click.option(
    "--reload",
    "reload_contracts",
    is_flag=True,
    help="Watch contracts/ and subcontracts/: on a change that validates, each affected node drains, reloads and "
    "resumes; on one that does not, the errors are logged and the running version stays.",
)
@click.pass_context
def run(
    ctx: click.Context,
    node_names: tuple[str, ...],
    no_nodes: bool,
    node_version: str | None,
    bus: str | None,
    store: str | None,
    http_address: str | None,
    metrics_address: str | None,
    log_level: str | None,
    log_format: str | None,
    reload_contracts: bool,
) -> None:
    """Host nodes in this process until SIGINT/SIGTERM, then drain and stop.

    With --http the HTTP gateway runs in this process too, next to whatever nodes it hosts; on shutdown it stops
    accepting requests and finishes those in hand before the nodes drain. With --http and --no-nodes it is all the
    process runs: it submits each request to the deployment on Kafka and hears the outcome from it.
    """
    from onex.runtime import Runtime, tune_gc

    settings = _settings(
        ctx,
        bus=bus,
        store=store,
        http=http_address,
        metrics=metrics_address,
        log_level=log_level,
        log_format=log_format,
    )
    if no_nodes and node_names:
        _fail("--no-nodes and --node exclude each other: host the named nodes, or none", code=2)
    if no_nodes and not settings.http:
        _fail("--no-nodes needs --http HOST:PORT (ONEX_HTTP): hosting no node, the gateway is all it runs", code=2)
    if no_nodes and settings.bus.startswith("memory:"):
        _fail(
            "--no-nodes needs a Kafka bus (--bus kafka://HOST:PORT): on the memory bus no other process can run "
            "the workflows, so nobody would do the work",
            code=2,
        )
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
    metrics_sock = None
    if settings.metrics:
        from onex.http import bind

        try:
            metrics_sock = bind(settings.metrics)
        except OnexError as exc:
            _fail(str(exc), code=2 if "is not HOST:PORT" in str(exc) else 1)
    configure_logs(settings.log_level, settings.log_format)
    tune_gc()

    async def main_() -> None:
        hosted: list[str] | None = [] if no_nodes else list(node_names) or None
        rt = Runtime(settings, nodes=hosted, version=node_version, contracts=contracts)
        async with contextlib.AsyncExitStack() as stack:
            if metrics_sock is not None:
                from onex.http import serve_metrics

                # Up before the nodes start: /healthz answers and /readyz says "starting" while they do.
                url = await stack.enter_async_context(serve_metrics(rt, metrics_sock))
                err.print(f"metrics on {url}/metrics, probes {url}/healthz and {url}/readyz", markup=False)
            await stack.enter_async_context(rt)
            if no_nodes:
                bus_url = redact_url(settings.bus)
                err.print(f"onex {__version__}: HTTP gateway only, hosting no node, on {bus_url}", markup=False)
            else:
                bus_url, store_url = redact_url(settings.bus), redact_url(settings.store_url())
                table = Table(title=f"onex {__version__}: hosting on {bus_url}, store {store_url}")
                for column in ("node", "version", "kind", "node id"):
                    table.add_column(column)
                for n in rt.nodes:
                    table.add_row(n.contract.name, n.contract.version, n.contract.node_type.value, n.node_id)
                err.print(table)
            if reload_contracts and not no_nodes:
                watcher = rt.watch_contracts()
                stack.callback(watcher.cancel)
                err.print(f"watching {settings.root}/contracts and subcontracts for changes", markup=False)
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
        for open_sock in (sock, metrics_sock):
            if open_sock is not None:
                open_sock.close()


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
@click.option("-v", "--verbose", is_flag=True, help="Say which bus and store are used, on stderr.")
@_output_option()
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
    verbose: bool,
    output: str,
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
    from onex._render import StampProgress, print_stamp_report
    from onex.client import StampRun
    from onex.runtime import tune_gc

    _exist(paths)
    settings = _settings(ctx, bus=bus, store=store)
    contracts = _contracts(settings, check_implementations=not settings.bus.startswith("kafka:"))
    if verbose:
        where = "submitting to a deployment" if settings.bus.startswith("kafka:") else "every node in this process"
        err.print(
            f"onex {__version__}: bus {redact_url(settings.bus)} ({where}), store {redact_url(settings.store_url())}",
            markup=False,
            soft_wrap=True,
        )
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
        with StampProgress(err) as progress:
            report = _run(run_.run(list(paths), on_progress=progress))
    except OnexError as exc:
        _fail(str(exc))
    if output == "json":
        emit_json(report.to_dict())
    else:
        print_stamp_report(report, console)
    if report.failed or report.busy:
        sys.exit(1)
    if report.pending:
        sys.exit(3)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--exclude", multiple=True, help="gitignore-style pattern to leave out (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="List valid files too, not only problems.")
@_output_option()
def verify(paths: tuple[Path, ...], exclude: tuple[str, ...], show_all: bool, output: str) -> None:
    """Recompute hashes offline: valid / modified / unstamped per file. Exits 1 if any file is modified."""
    from onex._render import print_verify_report
    from onex.client import verify_paths

    _exist(paths)
    report = verify_paths(list(paths), excludes=exclude)
    if output == "json":
        emit_json(report.to_dict(show_all=show_all))
    else:
        print_verify_report(report, console, show_all=show_all)
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
    from onex.stores import open_store

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
@click.argument("target", metavar="CORRELATION_ID|PATH", required=False)
@click.option("--latest", is_flag=True, help="Trace the most recently started workflow.")
@click.option("--store", help="sqlite:///PATH or postgresql://... Env: ONEX_STORE.")
@_output_option()
@click.pass_context
def trace(ctx: click.Context, target: str | None, latest: bool, store: str | None, output: str) -> None:
    """Print a workflow's steps and FSM transitions from the store.

    The workflow is a CORRELATION_ID, the latest workflow of the file at PATH, or with --latest the latest of all.
    """
    from onex.stores import open_store

    if (target is None) == (not latest):
        _fail("give a CORRELATION_ID, a PATH or --latest", code=2)
    wanted: uuid.UUID | None = None
    paths: list[str] = []
    if target is not None:
        try:
            wanted = uuid.UUID(target)
        except ValueError:
            path = Path(target)
            if not os.path.lexists(path):
                _fail(f"{target!r} is not a UUID, nor a path to a file", code=2)
            # The stamping effect records the path as the client gave it; onex stamp gives absolute paths.
            paths = list(dict.fromkeys([str(path.absolute()), str(path.resolve()), target]))
    settings = _settings(ctx, store=store)

    async def main_() -> None:
        async with open_store(settings.store_url()) as s:
            if wanted is not None:
                cid = wanted
            else:
                newest = []
                candidates: list[str | None] = [*paths] or [None]
                for candidate in candidates:
                    newest += await s.list_workflows(limit=1, file_path=candidate)
                if not newest:
                    _fail(f"no workflow{' for ' + target if target else ''} in {redact_url(settings.store_url())}")
                # Several spellings of one path may each have workflows: the most recently started wins.
                cid = max(newest, key=lambda w: w.started_at or datetime.min.replace(tzinfo=UTC)).correlation_id
            workflow = await s.get_workflow(cid)
            if workflow is None:
                _fail(f"no workflow {cid} in {redact_url(settings.store_url())}")
            steps = await s.list_steps(cid)
            transitions = await s.list_transitions(str(cid))
        if output == "json":
            emit_json({"workflow": workflow, "steps": steps, "transitions": transitions})
            return
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
            summary.add_row(key, Text(str(getattr(workflow, key))))
        console.print(summary)
        steps_table = Table(title="steps")
        for column in ("#", "step", "status", "ms", "error"):
            steps_table.add_column(column)
        for st in steps:
            steps_table.add_row(
                str(st.step_order),
                st.step_name,
                st.status,
                str(st.execution_time_ms or ""),
                Text(st.error_message or ""),
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


@main.command()
@click.option("--store", help="sqlite:///PATH or postgresql://... Env: ONEX_STORE.")
@_output_option("jsonl")
@click.pass_context
def ps(ctx: click.Context, store: str | None, output: str) -> None:
    """List the nodes the registries recorded: health, last heartbeat, host and pid, uptime.

    A node whose health the registry marked STALE or STOPPED is shown so. One still recorded alive but silent for
    more than three heartbeat intervals (ONEX_HEARTBEAT_INTERVAL_S) is shown STALE too: with no registry running,
    nobody marks it.
    """
    from onex.stores import open_store

    settings = _settings(ctx, store=store)

    async def main_() -> list[Any]:
        async with open_store(settings.store_url()) as s:
            return await s.list_registrations()

    try:
        registrations = _run(main_())
    except OnexError as exc:
        _fail(str(exc))
    now = datetime.now(UTC)
    rows = []
    for r in registrations:
        age = (now - r.last_heartbeat).total_seconds() if r.last_heartbeat else None
        health = r.health_status
        silent = age is None or age > 3 * max(settings.heartbeat_interval_s, 1.0)
        if health not in ("STALE", "STOPPED") and silent:
            health = "STALE"
        instance = str(r.metadata.get("instance") or "")
        host, _, pid = instance.rpartition("-")  # Settings.instance: HOSTNAME-PID
        rows.append(
            {
                "node_id": r.node_id,
                "name": r.metadata.get("node_name"),
                "kind": r.node_type,
                "version": r.node_version,
                "health": health,
                "recorded_health": r.health_status,
                "health_reason": r.metadata.get("health_reason") or None,
                "last_heartbeat": r.last_heartbeat,
                "heartbeat_age_s": None if age is None else round(age, 3),
                "host": host or None,
                "pid": int(pid) if pid.isdigit() else None,
                "uptime_s": r.metadata.get("uptime_seconds"),
                "registered_at": r.registered_at,
            }
        )
    emit(
        output,
        rows,
        title=f"nodes recorded in {redact_url(settings.store_url())}",
        columns={
            "node id": lambda r: r["node_id"],
            "name": lambda r: r["name"],
            "kind": lambda r: r["kind"],
            "version": lambda r: r["version"],
            "health": lambda r: r["health"],
            "heartbeat": lambda r: duration(r["heartbeat_age_s"]) + " ago" if r["last_heartbeat"] else "never",
            "host": lambda r: r["host"],
            "pid": lambda r: r["pid"],
            "uptime": lambda r: duration(r["uptime_s"]),
        },
    )


@main.command()
@click.option("--state", help="Only workflows in this state (pending, processing, completed, failed).")
@click.option("--namespace", help="Only workflows of this namespace.")
@click.option(
    "--since",
    metavar="DURATION|TIME",
    callback=lambda _ctx, _param, value: None if value is None else _since(value),
    help="Only workflows created since then: 10m, 2h, 30s, 1d ago, or an ISO 8601 time.",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@click.option("--store", help="sqlite:///PATH or postgresql://... Env: ONEX_STORE.")
@_output_option("jsonl")
@click.pass_context
def workflows(
    ctx: click.Context,
    state: str | None,
    namespace: str | None,
    since: datetime | None,
    limit: int,
    store: str | None,
    output: str,
) -> None:
    """List recent workflows from the store, newest first."""
    from onex.stores import open_store

    settings = _settings(ctx, store=store)

    async def main_() -> list[Any]:
        async with open_store(settings.store_url()) as s:
            return await s.list_workflows(state=state, namespace=namespace, since=since, limit=limit)

    try:
        found = _run(main_())
    except OnexError as exc:
        _fail(str(exc))
    rows = [
        {
            "correlation_id": w.correlation_id,
            "state": w.current_state,
            "namespace": w.namespace,
            "file_path": w.file_path,
            "file_hash": w.file_hash,
            "started_at": w.started_at,
            "completed_at": w.completed_at,
            "execution_time_ms": w.execution_time_ms,
            "error_message": w.error_message,
        }
        for w in found
    ]
    emit(
        output,
        rows,
        title=f"{len(rows)} workflow(s) in {redact_url(settings.store_url())}, newest first",
        columns={
            "correlation id": lambda r: r["correlation_id"],
            "state": lambda r: r["state"],
            "namespace": lambda r: r["namespace"],
            "file": lambda r: r["file_path"],
            "started": lambda r: r["started_at"].isoformat(timespec="seconds") if r["started_at"] else None,
            "ms": lambda r: None if r["execution_time_ms"] is None else f"{r['execution_time_ms']:.1f}",
            "error": lambda r: r["error_message"],
        },
    )


# --- onex aggregates: the aggregation windows reducers persisted ----------------------------------------------------


@main.command()
@click.option("--namespace", help="Only the windows of groups whose namespace is this.")
@click.option("--aggregation", help="Only the windows of this aggregation (its name in the contract).")
@click.option("--node", help="Only the windows this node persisted.")
@click.option("--open/--closed", "open_", default=None, help="Only windows still open, or only closed ones.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@click.option("--store", help="sqlite:///PATH or postgresql://... Env: ONEX_STORE.")
@_output_option("jsonl")
@click.pass_context
def aggregates(
    ctx: click.Context,
    namespace: str | None,
    aggregation: str | None,
    node: str | None,
    open_: bool | None,
    limit: int,
    store: str | None,
    output: str,
) -> None:
    """List aggregation windows from the store, newest window first (running totals last).

    Each row is one aggregation's result for one group in one window: its values, how many items it counted, and
    whether the window is closed. -o json / jsonl give every field, the engine's state included.
    """
    from onex.stores import open_store

    settings = _settings(ctx, store=store)
    closed = None if open_ is None else not open_

    async def main_() -> list[Any]:
        async with open_store(settings.store_url()) as s:
            return await s.list_aggregate_windows(
                node=node, aggregation=aggregation, namespace=namespace, closed=closed, limit=limit
            )

    try:
        found = _run(main_())
    except OnexError as exc:
        _fail(str(exc))
    rows = [{f.name: getattr(w, f.name) for f in dataclasses.fields(w)} for w in found]
    emit(
        output,
        rows,
        title=f"{len(rows)} window(s) in {redact_url(settings.store_url())}, newest first",
        columns={
            "aggregation": lambda r: r["aggregation"],
            "group": lambda r: compact(r["group"]),
            "window": window_span,
            "closed": lambda r: "yes" if r["closed"] else "no",
            "items": lambda r: r["items"],
            "values": lambda r: compact(r["values"]),
        },
    )


@main.command()
@click.option("--bus", help="As `onex run --bus`. Env: ONEX_BUS.")
@click.option("--store", help="As `onex run --store`. Env: ONEX_STORE.")
@_output_option()
@click.pass_context
def config(ctx: click.Context, bus: str | None, store: str | None, output: str) -> None:
    """Print every setting: its ONEX_* variable, type, default, effective value, where the value came from (flag,
    environment or default) and what it does.

    The store is shown as used (a relative SQLite path resolved against the root); passwords in URLs and the API key
    are never shown. The rows come from the declarations in onex.settings, so a new setting documents itself.
    """
    settings, sources = _settings_with_sources(ctx, bus=bus, store=store)
    rows = []
    for setting in declarations():
        value: Any = settings.store_url() if setting.name == "store" else getattr(settings, setting.name)
        if setting.secret:
            value = "(set)" if value else None
        elif isinstance(value, str):
            value = redact_url(value)
        rows.append(
            {
                "setting": setting.name,
                "variable": setting.variable,
                "type": setting.type,
                "default": plain(setting.default),
                "value": plain(value),
                "source": sources[setting.name],
                "description": setting.description,
            }
        )
    columns = {
        "variable": getter("variable"),
        "type": getter("type"),
        "default": lambda r: spelled(r["default"]),  # as the variable would spell it: true, not True
        "value": lambda r: spelled(r["value"]),
        "source": getter("source"),
        "description": getter("description"),
    }
    emit(output, rows, title="onex settings", columns=columns)


# --- onex dlq: dead letters (the logic is in onex.dlq) -----------------------------------------------------------


@main.group()
def dlq() -> None:
    """Dead letters: list them, show one, replay them.

    On Kafka they are read from the .dlq topics (no consumer group: reading moves no offsets) and the replays recorded
    in the store are joined; on the memory bus the runtime keeps them in the store, so the same commands work there.
    """


def _with_progress(description: str, call: Callable[[Callable[[int, int], None] | None], Coroutine[Any, Any, T]]) -> T:
    """Run ``call``, showing its progress on stderr when that is a terminal (never in a pipe or a log)."""
    if not err.is_terminal:
        return _run(call(None))
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        return _run(call(update))


def _event_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        _fail(f"{text!r} is not an event id (a UUID)", code=2)


def _letter(row: Any, *, whole: bool = False) -> dict[str, Any]:
    fields = {
        "event_id": row.event_id,
        "original_event_id": row.original_event_id,
        "topic": row.topic,
        "original_topic": row.original_topic,
        "event_type": row.event_type,
        "correlation_id": row.correlation_id,
        "group": row.group_name,
        "error_type": row.error_type,
        "error": row.error,
        "attempts": row.attempts,
        "dead_lettered_at": row.dead_lettered_at,
        "replayed_at": row.replayed_at,
        "replays": row.replays,
    }
    if whole:
        fields["letter"] = row.letter
    return fields


def _when(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


@dlq.command("list")
@click.option("--topic", help="Only the dead letters of this topic (its name, or its .dlq name).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@click.option("--bus", help="As `onex run --bus`. Env: ONEX_BUS.")
@click.option("--store", help="As `onex run --store`: where replays are recorded. Env: ONEX_STORE.")
@_output_option("jsonl")
@click.pass_context
def dlq_list(
    ctx: click.Context, topic: str | None, limit: int, bus: str | None, store: str | None, output: str
) -> None:
    """List dead letters, newest first, with their error and whether they were replayed."""
    from onex.dlq import list_dead_letters

    settings = _settings(ctx, bus=bus, store=store)
    try:
        found = _with_progress(
            "reading dead letters",
            lambda progress: list_dead_letters(settings, topic=topic, limit=limit, progress=progress),
        )
    except OnexError as exc:
        _fail(str(exc))
    if found.note:
        err.print(Text.assemble(("warning:", "yellow"), " ", found.note), soft_wrap=True)
    where = f" of {topic}" if topic else ""
    emit(
        output,
        [_letter(r) for r in found.rows],
        title=f"showing {len(found.rows)} of {found.total} dead letter(s){where}, newest first",
        columns={
            "dead letter": lambda r: r["event_id"],
            "original": lambda r: r["original_event_id"] or "-",
            "topic": lambda r: r["original_topic"],
            "event type": lambda r: r["event_type"],
            "group": lambda r: r["group"],
            "error": lambda r: f"{r['error_type']}: {r['error']}",
            "attempts": lambda r: r["attempts"],
            "at": lambda r: _when(r["dead_lettered_at"]),
            "replays": lambda r: (
                r["replays"] if r["replayed_at"] is None else f"{r['replays']} ({_when(r['replayed_at'])})"
            ),
        },
    )


@dlq.command("show")
@click.argument("event_id")
@click.option("--bus", help="As `onex run --bus`. Env: ONEX_BUS.")
@click.option("--store", help="As `onex run --store`. Env: ONEX_STORE.")
@_output_option()
@click.pass_context
def dlq_show(ctx: click.Context, event_id: str, bus: str | None, store: str | None, output: str) -> None:
    """Show a dead letter and the original it holds, by the dead letter's id or by the original event's id.

    An original given up on by several consumer groups, or again after a replay, has several dead letters: all are
    shown, oldest first (with -o json, a JSON array of them, always an array).
    """
    from onex.dlq import find_dead_letters

    wanted = _event_id(event_id)
    settings = _settings(ctx, bus=bus, store=store)
    try:
        found = _with_progress(
            "reading dead letters", lambda progress: find_dead_letters(settings, wanted, progress=progress)
        )
    except OnexError as exc:
        _fail(str(exc))
    if found.note:
        err.print(Text.assemble(("warning:", "yellow"), " ", found.note), soft_wrap=True)
    if not found.rows:
        _fail(f"no dead letter with id or original id {wanted}")
    if output == "json":
        emit_json([_letter(r, whole=True) for r in found.rows])
        return
    for row in found.rows:
        summary = Table(title=f"dead letter {row.event_id}", show_header=False)
        for key, value in _letter(row).items():
            summary.add_row(key, Text("" if value is None else str(plain(value))))
        console.print(summary)
        payload = row.letter.get("payload") or {}
        if isinstance(payload.get("original"), dict):
            console.print("original envelope:")
            console.print(Text(json.dumps(payload["original"], indent=2, ensure_ascii=False)))
        else:
            encoding = payload.get("original_raw_encoding", "utf-8")
            cut = " (truncated)" if payload.get("original_raw_truncated") else ""
            where = f"{payload.get('original_partition')}]@{payload.get('original_offset')}"
            console.print(
                Text(
                    f"original record (no envelope), key {payload.get('original_key')!r}, "
                    f"{payload.get('original_topic')}[{where}, {encoding}{cut}:"
                )
            )
            console.print(Text(str(payload.get("original_raw", ""))))


@dlq.command("replay")
@click.argument("event_ids", nargs=-1, metavar="[EVENT_ID]...")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter not replayed yet.")
@click.option("--topic", help="Only the dead letters of this topic (its name, or its .dlq name).")
@click.option("--force", is_flag=True, help="Replay named dead letters even if they were replayed before.")
@click.option("--bus", help="As `onex run --bus`. Env: ONEX_BUS.")
@click.option("--store", help="As `onex run --store`: where replays are recorded. Env: ONEX_STORE.")
@_output_option()
@click.pass_context
def dlq_replay(
    ctx: click.Context,
    event_ids: tuple[str, ...],
    replay_all: bool,
    topic: str | None,
    force: bool,
    bus: str | None,
    store: str | None,
    output: str,
) -> None:
    """Republish the originals of dead letters to their original topics, and record the replays in the store.

    EVENT_ID is a dead letter's id or its original event's id. A replay reaches every consumer group of the topic.
    On the memory bus every node is hosted in this process for the replay, until the bus is idle. Exits 1 if a named
    id was not found or a dead letter could not be replayed (or its replay not recorded).
    """
    from onex.dlq import replay

    if event_ids and replay_all:
        _fail("give EVENT_IDs or --all, not both", code=2)
    if not event_ids and not replay_all:
        _fail("give the EVENT_IDs to replay, or --all", code=2)
    wanted = [_event_id(text) for text in event_ids]
    settings = _settings(ctx, bus=bus, store=store)
    try:
        results = _with_progress(
            "reading dead letters",
            lambda progress: replay(
                settings, wanted, replay_all=replay_all, topic=topic, force=force, progress=progress
            ),
        )
    except OnexError as exc:
        _fail(str(exc))
    counts = {status: sum(r.status == status for r in results) for status in ("replayed", "skipped", "not-found")}
    failed = sum(not r.ok for r in results if r.status not in ("not-found",))
    rows = [{**dataclasses.asdict(r), "ok": r.ok} for r in results]
    emit(
        output,
        rows,
        title=f"replayed {counts['replayed']}, skipped {counts['skipped']}, not found {counts['not-found']}, "
        f"failed {failed}",
        columns={
            "requested": lambda r: r["requested"],
            "status": lambda r: r["status"],
            "dead letter": lambda r: r["event_id"],
            "topic": lambda r: r["original_topic"],
            "detail": lambda r: r["detail"],
        },
    )
    if any(not r.ok for r in results):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
