"""The ``onex`` command line.

Settings come from flags, then ``ONEX_*`` environment variables, then defaults. Exit codes: 0 ok, 1 a failure was
found (invalid contract, modified file, failed workflow), 2 usage error, 3 timed out with work pending (``onex
stamp``: files without an outcome by ``--timeout``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

# The author's, the operator's and the metastore's commands register themselves on ``main`` when imported.
import onex._cli_author
import onex._cli_metastore
import onex._cli_operate  # noqa: F401
from onex import __version__
from onex._cli import (
    SECONDS,
    SIGTERM_STATUS,
    _contracts,
    _exist,
    _fail,
    _from_store,
    _output_option,
    _run,
    _settings,
    err,
    interrupted_status,
)
from onex._cli import main as main  # the console script: onex.cli:main
from onex._render import console, emit, emit_json, getter, show
from onex.contracts import (
    Contract,
    bundled_schema,
    load_contracts,
    resolve_implementation,
    schemas,
)
from onex.exceptions import ContractError, OnexError
from onex.fsm import mermaid
from onex.logs import configure as configure_logs
from onex.logs import event
from onex.settings import LOG_FORMATS, LOG_LEVELS, redact_url


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
            else:  # a contract file, or a subcontract file (checked as one)
                checked += len(load_contracts(settings.root, [target]).contracts)
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
    if old.startswith("git:") and not new.resolve().is_relative_to(settings.root.resolve()):  # exit 1 says breaking
        raise click.BadParameter(
            f"{new} is outside the project root {settings.root}: {old} compares a file of the project", param_hint="NEW"
        )
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
    # Named, not taken from the first row: a root without contracts has none, and its table still says what it lists.
    columns = {name: getter(name) for name in ("node", "version", "kind", "contract", "implementation")}
    emit(output, rows, title=f"nodes in {settings.root}", columns=columns)


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
    from onex.runtime import Runtime, select, tune_process

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
    try:
        select(contracts, node_names, node_version)
    except ValueError as exc:
        _fail(f"--node: {exc}", code=2)
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
    tune_process()
    banner = logging.getLogger("onex.cli")

    def say(name: str, message: str, **fields: Any) -> None:
        """A line of what the process does, on stderr: printed whole (``err`` never folds or cuts a line that is not
        on a terminal), or with ``--log-format json`` a log record, so that stderr stays one JSON object a line."""
        if settings.log_format == "json":
            event(banner, logging.INFO, name, message, **fields)
        else:
            err.print(message, markup=False, soft_wrap=True)

    async def main_() -> None:
        hosted: list[str] | None = [] if no_nodes else list(node_names) or None
        rt = Runtime(settings, nodes=hosted, version=node_version, contracts=contracts)
        async with contextlib.AsyncExitStack() as stack:
            if metrics_sock is not None:
                from onex.http import serve_metrics

                # Up before the nodes start: /healthz answers and /readyz says "starting" while they do.
                url = await stack.enter_async_context(serve_metrics(rt, metrics_sock))
                say("metrics", f"metrics on {url}/metrics, probes {url}/healthz and {url}/readyz", url=url)
            await stack.enter_async_context(rt)
            bus_url = redact_url(settings.bus)
            if no_nodes:
                say("gateway_only", f"onex {__version__}: HTTP gateway only, hosting no node, on {bus_url}")
            elif settings.log_format == "json":  # the runtime logged the bus and the store (process_start)
                for n in rt.nodes:
                    name, version, kind = n.contract.name, n.contract.version, n.contract.node_type.value
                    event(
                        banner,
                        logging.INFO,
                        "hosting",
                        f"hosting {name} {version} ({kind})",
                        node=n.node_id,
                        node_name=name,
                        version=version,
                        kind=kind,
                    )
            else:
                store_url = redact_url(settings.store_url())
                table = Table(title=Text(f"onex {__version__}: hosting on {bus_url}, store {store_url}"))
                for column in ("node", "version", "kind", "node id"):
                    table.add_column(column)
                for n in rt.nodes:
                    table.add_row(n.contract.name, n.contract.version, n.contract.node_type.value, n.node_id)
                show(table, err)
            if reload_contracts and not no_nodes:
                watcher = rt.watch_contracts()
                stack.callback(watcher.cancel)
                say("watching", f"watching {settings.root}/contracts and subcontracts for changes")
            if sock is None:
                await rt.run_until_signal(ready=lambda: say("running", "running; Ctrl-C drains and stops"))
            else:

                def ready(url: str) -> None:
                    key = "bearer key required" if settings.api_key or settings.api_keys else "no API key"
                    say("running", f"HTTP API on {url}{PREFIX} ({key}); running; Ctrl-C drains and stops", url=url)

                await serve(rt, settings, sock=sock, ready=ready)
            say("draining", "draining...")
        say("stopped", "stopped")

    try:
        _run(main_(), settings)
    except OnexError as exc:
        _fail(str(exc))
    finally:
        for open_sock in (sock, metrics_sock):
            if open_sock is not None:
                open_sock.close()


def _file_types() -> None:
    """Load the installed file type plugins now: a broken one is one line naming its entry point, exit 1."""
    from onex.filetypes import file_type_plugins

    try:
        file_type_plugins()
    except OnexError as exc:
        _fail(str(exc))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rich", is_flag=True, help="Write rich YAML metadata blocks instead of one-line stamps.")
@click.option("--namespace", default="onex.default", show_default=True, help="Namespace the stamps belong to.")
@click.option("--dry-run", is_flag=True, help="Hash and report, change no file.")
@click.option("--force", is_flag=True, help="Stamp read-only files too (by mode bits); else they are skipped.")
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
    type=SECONDS,
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
    force: bool,
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
      130, 143  interrupted by Ctrl-C or SIGTERM (after a drain; how far it
         got is said on stderr)
    """
    from onex._render import StampProgress, print_stamp_report
    from onex.client import StampRun
    from onex.runtime import tune_process

    _exist(paths)
    _file_types()
    settings = _settings(ctx, bus=bus, store=store)
    contracts = _contracts(settings, check_implementations=not settings.bus.startswith("kafka:"))
    if verbose:
        where = "submitting to a deployment" if settings.bus.startswith("kafka:") else "every node in this process"
        err.print(
            f"onex {__version__}: bus {redact_url(settings.bus)} ({where}), store {redact_url(settings.store_url())}",
            markup=False,
            soft_wrap=True,
        )
    tune_process()
    run_ = StampRun(
        settings,
        contracts,
        rich=rich,
        namespace=namespace,
        dry_run=dry_run,
        excludes=exclude,
        wait=not no_wait,
        timeout=timeout,
        force=force,
    )
    heard: list[tuple[int, int | None]] = [(0, None)]  # outcomes heard, and files submitted once all are

    def progress_(done: int, total: int | None) -> None:
        heard[0] = (done, total)
        progress(done, total)

    try:
        with StampProgress(err) as progress:
            report = _run(run_.run(list(paths), on_progress=progress_), settings)
    except OnexError as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: the nodes drained; say how far it got, and exit as a shell expects.
        status = interrupted_status(exc)
        done, total = heard[0]
        of = f"of {total} " if total is not None else ""
        _fail(
            f"interrupted by {'SIGTERM' if status == SIGTERM_STATUS else 'Ctrl-C'}: {done} file(s) {of}had their "
            f"outcome{'' if total is not None else ', and not every file was submitted'}; a file may be stamped "
            "without its outcome heard. Run onex stamp again to finish: a file stamped already is then unchanged",
            status,
        )
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
@click.option(
    "--publish",
    is_flag=True,
    help="Also publish METADATA_STAMP_VALIDATED for every file, on the bus (--bus / ONEX_BUS, as onex stamp).",
)
@click.option("--bus", help="With --publish: kafka://HOST:PORT, or memory:// (nobody hears it). Env: ONEX_BUS.")
@click.option("--namespace", default="onex.default", show_default=True, help="With --publish: the events' namespace.")
@_output_option()
@click.pass_context
def verify(
    ctx: click.Context,
    paths: tuple[Path, ...],
    exclude: tuple[str, ...],
    show_all: bool,
    publish: bool,
    bus: str | None,
    namespace: str,
    output: str,
) -> None:
    """Recompute hashes offline: valid / modified / unstamped (or error, skipped) per file. Exits 1 if any file is
    modified or could not be read.

    With --publish each verdict also goes out as a METADATA_STAMP_VALIDATED event (`onex tail` shows them); a bus
    that cannot take them is an error (exit 1) after the report is printed."""
    from onex._render import print_verify_report
    from onex.client import publish_verified, verify_paths

    _exist(paths)
    if (bus is not None or namespace != "onex.default") and not publish:
        _fail("--bus and --namespace only go with --publish", code=2)
    _file_types()
    report = verify_paths(list(paths), excludes=exclude)
    published: str | None = None
    if publish:
        settings = _settings(ctx, bus=bus)
        contracts = _contracts(settings, check_implementations=False)
        if settings.bus.startswith("memory:"):
            err.print("note: on the memory bus the events die with this process: give --bus kafka://HOST:PORT")
        try:
            _run(publish_verified(report, settings, contracts, namespace=namespace), settings)
        except OnexError as exc:
            published = str(exc)
    if output == "json":
        emit_json(report.to_dict(show_all=show_all))
    else:
        print_verify_report(report, console, show_all=show_all)
    if published is not None:
        _fail(f"the METADATA_STAMP_VALIDATED events were not published: {published}")
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
    settings = _settings(ctx.parent or ctx, store=store)
    applied = _from_store(settings, lambda s: s.upgrade(), create=True)
    if applied:
        for name in applied:
            console.print(f"applied {name}")
    else:
        console.print("up to date")


if __name__ == "__main__":  # pragma: no cover
    main()
