"""What an operator reads and replays from the command line: ``onex trace``, ``ps``, ``workflows``, ``aggregates``,
``config`` and ``dlq list|show|replay``. Registered on the ``onex`` group (``onex._cli.main``) when ``onex.cli`` is
imported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from onex._cli import (
    ROWS,
    SECONDS,
    T,
    _contracts,
    _fail,
    _from_store,
    _output_option,
    _run,
    _settings,
    _settings_with_sources,
    _since,
    err,
    main,
)
from onex._render import cell, compact, console, duration, emit, emit_json, getter, plain, show, window_span
from onex.exceptions import OnexError
from onex.settings import Settings, declarations, redact_url, spelled

if TYPE_CHECKING:
    from onex.catalog import EventCatalog
    from onex.contracts import ContractSet


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
    from onex.stores import store_for

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
            # The stamping effect records the path as the client gave it: onex stamp gives it joined to its cwd
            # (Path.absolute: symlinks and ".." kept), so the same spelling from any cwd finds it; one recorded
            # otherwise (an HTTP client's, one stamped before onex stamp gave absolute paths) may be the real path or
            # the PATH as typed.
            paths = list(dict.fromkeys([str(path.absolute()), str(path.resolve()), target]))
    settings = _settings(ctx, store=store)

    async def main_() -> None:
        async with store_for(settings, create=False) as s:
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
            # Its stamp's row, with the O.N.E. v0.1 columns (op_id, version, intelligence_data ...).
            stamp_rows = await s.get_stamps([workflow.stamp_id]) if workflow.stamp_id is not None else []
        if output == "json":
            emit_json({"workflow": workflow, "steps": steps, "transitions": transitions, "stamps": stamp_rows})
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
            summary.add_row(key, cell(str(getattr(workflow, key))))
        show(summary)
        steps_table = Table(title="steps")
        for column in ("#", "step", "status", "ms", "error"):
            steps_table.add_column(column)
        for st in steps:
            steps_table.add_row(
                str(st.step_order),
                st.step_name,
                st.status,
                str(st.execution_time_ms or ""),
                cell(st.error_message),
            )
        show(steps_table)
        tr = Table(title="transitions")
        for column in ("at", "from", "to", "trigger"):
            tr.add_column(column)
        for t in transitions:
            tr.add_row(str(t.created_at), t.from_state or "", t.to_state, t.transition_event)
        show(tr)
        for row in stamp_rows:
            stamp_table = Table(title=f"stamp {row.id}", show_header=False)
            for key in (
                "file_hash",
                "stamp_type",
                "version",
                "op_id",
                "protocol_version",
                "metadata_version",
                "file_metadata",
                "intelligence_data",
                "created_at",
                "updated_at",
            ):
                value = getattr(row, key)
                stamp_table.add_row(key, Text(json.dumps(value) if isinstance(value, dict) else str(value)))
            show(stamp_table)

    try:
        _run(main_(), settings)
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
    settings = _settings(ctx, store=store)
    registrations = _from_store(settings, lambda s: s.list_registrations())
    now = datetime.now(UTC)
    rows = []
    for r in registrations:
        age = (now - r.last_heartbeat).total_seconds() if r.last_heartbeat else None
        health = r.health_status
        silent = age is None or age > 3 * max(settings.heartbeat_interval_s, 1.0)
        if health not in ("STALE", "STOPPED") and silent:
            health = "STALE"
        host, pid = _host_and_pid(r.metadata)
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
                "host": host,
                "pid": pid,
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
            "heartbeat": lambda r: _heartbeat_age(r["heartbeat_age_s"]),
            "host": lambda r: r["host"],
            "pid": lambda r: r["pid"],
            "uptime": lambda r: duration(r["uptime_s"]),
        },
    )


def _host_and_pid(metadata: dict[str, Any]) -> tuple[str | None, int | None]:
    """A registration's host and pid: those the node sent, else read from its default instance (HOSTNAME-PID); an
    instance named otherwise (``ONEX_INSTANCE=worker-a``) names no pid, and is the host shown."""
    host, pid = metadata.get("host"), metadata.get("pid")
    if isinstance(host, str) and isinstance(pid, int):
        return host, pid
    instance = str(metadata.get("instance") or "")
    name, _, number = instance.rpartition("-")
    if name and number.isdigit():
        return name, int(number)
    return instance or None, None


def _heartbeat_age(age_s: float | None) -> str:
    """How long ago the last heartbeat was; one stamped ahead of this machine's clock says so, not "-5s ago"."""
    if age_s is None:
        return "never"
    if age_s < 0:
        return f"{duration(-age_s)} ahead (clock skew)"
    return duration(age_s) + " ago"


@main.command()
@click.option("--state", help="Only workflows in this state (pending, processing, completed, failed).")
@click.option("--namespace", help="Only workflows of this namespace.")
@click.option(
    "--since",
    metavar="DURATION|TIME",
    callback=lambda _ctx, _param, value: None if value is None else _since(value),
    help="Only workflows created since then: 10m, 2h, 30s, 1d ago, or an ISO 8601 time.",
)
@click.option("--limit", type=ROWS, default=50, show_default=True, help="At most this many.")
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
    settings = _settings(ctx, store=store)

    found = _from_store(
        settings, lambda s: s.list_workflows(state=state, namespace=namespace, since=since, limit=limit)
    )
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
@click.option("--limit", type=ROWS, default=100, show_default=True, help="At most this many.")
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
    settings = _settings(ctx, store=store)
    closed = None if open_ is None else not open_

    found = _from_store(
        settings,
        lambda s: s.list_aggregate_windows(
            node=node, aggregation=aggregation, namespace=namespace, closed=closed, limit=limit
        ),
    )
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


def _with_progress(
    description: str, call: Callable[[Callable[[int, int], None] | None], Coroutine[Any, Any, T]], settings: Settings
) -> T:
    """Run ``call``, showing its progress on stderr when that is a terminal (never in a pipe or a log)."""
    if not err.is_terminal:
        return _run(call(None), settings)
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        return _run(call(update), settings)


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
@click.option("--limit", type=ROWS, default=100, show_default=True, help="At most this many.")
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
            settings,
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
        page={"total": found.total, "limit": limit, "offset": 0},
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
            "reading dead letters", lambda progress: find_dead_letters(settings, wanted, progress=progress), settings
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
            summary.add_row(key, cell(None if value is None else plain(value)))
        show(summary)
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
            settings,
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


# --- onex publish / onex tail: poke a node graph by event name (the logic is in onex.poke) ---------------------------


def _event_catalog(settings: Settings, names: tuple[str, ...], *, hosting: bool) -> tuple[ContractSet, EventCatalog]:
    """(the contracts, their ``EventCatalog``); an event name no contract declares is a usage error naming them all."""
    from onex import catalog as catalogs
    from onex.poke import unknown

    contracts = _contracts(settings, check_implementations=hosting)
    try:
        catalog = catalogs.EventCatalog(contracts.contracts, settings)
    except OnexError as exc:  # a payload model that does not import
        _fail(str(exc))
    why = unknown(catalog, names)
    if why is not None:
        _fail(why, code=2)
    return contracts, catalog


def _arrived(envelope: Any, output: str, *, key: str | None = None) -> None:
    """One envelope on one line, flushed (``click.echo`` flushes): JSON for -o json/jsonl, else time, event, id, key,
    correlation id and the payload on one line."""
    if output in ("json", "jsonl"):
        click.echo(envelope.model_dump_json())
        return
    payload = envelope.payload.model_dump(mode="json") if hasattr(envelope.payload, "model_dump") else envelope.payload
    when = envelope.event_timestamp.isoformat(timespec="milliseconds")
    click.echo(
        f"{when} {envelope.event_type} {envelope.event_id} key={key if key is not None else envelope.key} "
        f"correlation={envelope.correlation_id or '-'} {compact(payload)}"
    )


@main.command()
@click.argument("event_name")
@click.argument("payload", metavar="'JSON'")
@click.option(
    "--key",
    help="The Kafka key (partition_key). Default: the payload field the contract names, else the correlation id.",
)
@click.option("--correlation-id", "correlation_id", metavar="UUID", help="Default: a new one.")
@click.option(
    "--bus",
    help="memory:// (default: every node hosted in this process for this one event) or kafka://HOST:PORT to "
    "publish to a running deployment. Env: ONEX_BUS.",
)
@click.option("--store", help="Memory bus only: the store the hosted nodes use. Env: ONEX_STORE.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=30.0,
    show_default=True,
    help="Kafka: seconds for the broker to acknowledge. Memory bus: seconds for the graph to settle.",
)
@_output_option()
@click.pass_context
def publish(
    ctx: click.Context,
    event_name: str,
    payload: str,
    key: str | None,
    correlation_id: str | None,
    bus: str | None,
    store: str | None,
    timeout: float,
    output: str,
) -> None:
    """Publish one event a contract declares: the JSON payload ('-': read from stdin) is validated against the
    event's payload model or schema, then sent in an envelope on the event's topic.

    On Kafka it returns once the broker acknowledged it. On the memory bus (the default) no other process would hear
    it, so every node of the project is hosted in this process for it (as `onex stamp` does): the event is
    published, the graph runs until the bus is idle (at most --timeout), and the events it caused are printed as
    `onex tail` prints them; then the nodes stop.

    \b
    Exit codes:
      0  published (memory bus: and the graph settled, no dead letter)
      1  the payload does not fit the event, the bus failed, or (memory bus)
         a dead letter resulted or the graph did not settle within --timeout
      2  usage error: unknown event, payload not a JSON object, bad option
    """
    from onex.envelope import DEAD_LETTER_EVENT
    from onex.exceptions import PayloadError
    from onex.poke import build, parse_payload, poke_memory, publish_kafka

    cid: uuid.UUID | None = None
    if correlation_id is not None:
        try:
            cid = uuid.UUID(correlation_id)
        except ValueError:
            _fail(f"--correlation-id {correlation_id!r} is not a UUID", code=2)
    try:
        data = parse_payload(sys.stdin.read() if payload == "-" else payload)
    except ValueError as exc:
        _fail(str(exc), code=2)
    settings = _settings(ctx, bus=bus, store=store)
    on_kafka = settings.bus.startswith("kafka:")
    contracts, catalog = _event_catalog(settings, (event_name,), hosting=not on_kafka)
    try:
        poke = build(catalog, settings, event_name, data, key=key, correlation_id=cid)
    except PayloadError as exc:
        _fail(f"{event_name}: the payload does not fit: {exc.detail}")
    summary: dict[str, Any] = {
        "event_id": poke.envelope.event_id,
        "topic": poke.topic,
        "key": poke.key,
        "correlation_id": poke.envelope.correlation_id,
    }

    async def on_kafka_() -> None:
        try:
            async with asyncio.timeout(timeout):
                await publish_kafka(settings, poke)
        except TimeoutError:
            _fail(f"{event_name} {poke.envelope.event_id} not acknowledged within --timeout {timeout:g}s")

    try:
        if on_kafka:
            _run(on_kafka_(), settings)
            poked = None
        else:
            poked = _run(poke_memory(settings, contracts, catalog, poke, timeout=timeout), settings)
    except OnexError as exc:
        _fail(str(exc))
    if output == "json":
        whole: dict[str, Any] = {**summary, "envelope": poke.envelope.model_dump(mode="json")}
        if poked is not None:
            whole["settled"] = poked.settled
            whole["resulted"] = [e.model_dump(mode="json") for e in poked.resulted]
        emit_json(whole)
    else:
        for name, value in summary.items():
            click.echo(f"{name}: {value}")
        if poked is not None:
            click.echo(f"resulted: {len(poked.resulted)} event(s)")
            for envelope in poked.resulted:
                _arrived(envelope, output)
    if poked is None:
        return
    letters = [e for e in poked.resulted if e.event_type == DEAD_LETTER_EVENT]
    if letters:
        first = letters[0].payload
        _fail(
            f"{len(letters)} dead letter(s) resulted; the first, from {first.get('original_topic')}: "
            f"{first.get('error_type')}: {first.get('error')}"
        )
    if not poked.settled:
        _fail(f"the graph did not settle within --timeout {timeout:g}s; shown: what resulted until then")


@main.command()
@click.argument("event_names", nargs=-1, required=True, metavar="EVENT_NAME...")
@click.option("--bus", help="kafka://HOST:PORT: the broker to read (tail needs one). Env: ONEX_BUS.")
@click.option("--from-beginning", is_flag=True, help="Read the topics from their beginning, not from their end.")
@click.option("--max", "max_count", type=ROWS, help="Stop after this many envelopes.")
@click.option(
    "--timeout",
    type=SECONDS,
    help="Stop after this many seconds without an envelope. Default: never.",
)
@_output_option("jsonl")
@click.pass_context
def tail(
    ctx: click.Context,
    event_names: tuple[str, ...],
    bus: str | None,
    from_beginning: bool,
    max_count: int | None,
    timeout: float | None,
    output: str,
) -> None:
    """Print the envelopes of these events as they arrive on Kafka, one a line, until Ctrl-C.

    The topics are read without a consumer group: nothing is committed and no deployment's offsets move. Table
    output: time, event, id, key, correlation id, payload; -o json / jsonl: each envelope as one JSON object a line,
    flushed (pipe it to jq). A record that is no envelope is reported on stderr and skipped. On the memory bus there
    is nothing to read from another process: `onex publish` there prints what its event caused.

    \b
    Exit codes:
      0  stopped by Ctrl-C, by --max, or by --timeout
      1  the bus failed, or --timeout ended it before --max envelopes arrived
      2  usage error: unknown event, no Kafka bus
    """
    import contextlib

    from onex.poke import tail as read

    settings = _settings(ctx, bus=bus)
    if not settings.bus.startswith("kafka:"):
        _fail(
            "onex tail reads a broker: give --bus kafka://HOST:PORT (or ONEX_BUS); on the memory bus no event "
            "outlives its process, and `onex publish` there prints the events it caused",
            code=2,
        )
    _, catalog = _event_catalog(settings, event_names, hosting=False)
    topics = list(dict.fromkeys(catalog.topic(name) for name in event_names))
    wanted = set(event_names)
    count = 0

    async def main_() -> None:
        nonlocal count
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as idle:

            def quiet_for(seconds: float | None) -> None:
                if seconds is not None:
                    idle.reschedule(loop.time() + seconds)

            def ready(partitions: int) -> None:
                where = "beginning" if from_beginning else "end"
                err.print(
                    f"tailing {', '.join(event_names)}: {partitions} partition(s) of {len(topics)} topic(s) from "
                    f"the {where}; Ctrl-C to stop",
                    markup=False,
                    soft_wrap=True,
                )
                quiet_for(timeout)

            arrivals = read(settings, topics, from_beginning=from_beginning, on_ready=ready)
            async with contextlib.aclosing(arrivals):
                async for arrival in arrivals:
                    if arrival.envelope is None:
                        where = f"{arrival.topic}[{arrival.partition}]@{arrival.offset}"
                        err.print(Text.assemble(("warning:", "yellow"), f" {where}: {arrival.error}"), soft_wrap=True)
                        continue
                    if arrival.envelope.event_type not in wanted:  # another event sharing a topic (none do today)
                        continue
                    _arrived(arrival.envelope, output, key=arrival.key)
                    count += 1
                    if max_count is not None and count >= max_count:
                        return
                    quiet_for(timeout)

    try:
        _run(main_(), settings)
    except KeyboardInterrupt:
        return  # Ctrl-C: the way a tail is meant to end
    except TimeoutError:
        if max_count is not None:
            _fail(f"{count} of --max {max_count} envelope(s) arrived; none for --timeout {timeout:g}s")
    except OnexError as exc:
        _fail(str(exc))
