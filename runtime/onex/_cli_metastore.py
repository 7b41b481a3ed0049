"""The metastore from the command line: ``onex meta get|set|history|rollback`` (metadata entries), ``onex flags
list|eval`` (feature flags) and ``onex config-store effective`` (a service's merged configuration; ``onex config``
is the runtime's settings). Registered on the ``onex`` group (``onex._cli.main``) when ``onex.cli`` is imported;
the work is ``onex.metastore.Metastore``'s, on the store of ``--store`` / ``ONEX_STORE``.

Every command takes ``--tenant`` (default ``default``) and ``-o json``. A change (``set``, ``rollback``) is recorded
as made by ``--actor`` (default ``cli:$USER``) and, with a Kafka bus (``--bus`` / ``ONEX_BUS``), announced on it so
that every running gateway drops what it cached; on the memory bus no other process could be listening.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from onex._cli import T, _fail, _output_option, _run, _settings, main
from onex._render import cell, compact, console, emit, emit_json, show
from onex.exceptions import OnexError
from onex.metastore.service import MAX_LIMIT, MAX_VERSION
from onex.settings import DEFAULT_TENANT, Settings
from onex.store import MAX_OFFSET

if TYPE_CHECKING:
    from onex.metastore.service import Metastore

ENVIRONMENTS = ("development", "staging", "production")
CONTENT_TYPES = ("json", "yaml", "text", "binary")

_store_option = click.option("--store", help="sqlite:///PATH or postgresql://... Env: ONEX_STORE.")
_tenant_option = click.option(
    "--tenant", default=DEFAULT_TENANT, show_default=True, help="The tenant whose entities are read or changed."
)
_namespace_option = click.option("--namespace", default="default", show_default=True, help="The entry's namespace.")


def _bus_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--bus",
        help="kafka://HOST:PORT: announce the change there, so running gateways drop what they cached. Env: ONEX_BUS.",
    )(f)


def _actor_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--actor", help="Who makes the change, as its version records it (default: cli:$USER).")(f)


def _expected_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--expected-version",
        type=click.IntRange(min=1, max=MAX_VERSION),
        help="Change only if the entity is at this version (else exit 1, nothing written).",
    )(f)


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (a container's uid without a passwd entry)
        return "cli"


def _with_metastore(settings: Settings, call: Callable[[Metastore], Awaitable[T]], *, announce: bool = False) -> T:
    """``call(metastore)`` over the settings' store (and, for a change with ``announce``, a Kafka bus to publish its
    change event on); an ``OnexError`` is one line on stderr, exit 1."""
    from onex.metastore.service import Metastore
    from onex.stores import store_for

    async def main_() -> T:
        async with store_for(settings, create=False) as store:  # a mistyped path: said, not created empty
            if not (announce and settings.bus.startswith("kafka:")):
                return await call(Metastore(store, None, settings=settings))
            from onex._kafka import KafkaBus

            async with KafkaBus.from_url(settings.bus) as bus:
                return await call(Metastore(store, bus, settings=settings))

    try:
        return _run(main_(), settings)
    except OnexError as exc:
        _fail(str(exc))


def _record(title: str, entity: dict[str, Any]) -> None:
    """One entity as a two-column table: field, value (JSON values on one line)."""
    table = Table(title=Text(title), show_header=False)
    for name, value in entity.items():
        # A text value on one line, as every cell (a multi-line value split its row); -o json keeps it whole.
        table.add_row(name, cell(value) if isinstance(value, str) else Text(compact(value)))
    show(table)


def _dumped(entity: Any) -> dict[str, Any]:
    return entity.model_dump(mode="json", by_alias=True)  # type: ignore[no-any-return]


# --- onex meta -------------------------------------------------------------------------------------------------------


@main.group()
def meta() -> None:
    """Read and change metadata entries (versioned, per tenant): get, set, history, rollback."""


@meta.command("get")
@click.argument("key")
@_namespace_option
@_tenant_option
@_store_option
@_output_option()
@click.pass_context
def meta_get(ctx: click.Context, key: str, namespace: str, tenant: str, store: str | None, output: str) -> None:
    """Print the entry KEY of --namespace: its value and version. Exit 1 if there is none."""
    settings = _settings(ctx, store=store)
    entry = _with_metastore(settings, lambda m: m.metadata_by_key(tenant, key, namespace=namespace))
    if output == "json":
        emit_json(_dumped(entry))
    else:
        _record(f"{namespace}/{key} (tenant {tenant}), version {entry.version}", _dumped(entry))


def _value(raw: str, content_type: str) -> Any:
    """VALUE as the entry holds it: JSON for --content-type json (a usage error if it is not), else the text."""
    if content_type != "json":
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        _fail(
            f"VALUE is not JSON ({exc.msg} at column {exc.colno}); quote a string ('\"text\"') or pass "
            "--content-type text",
            code=2,
        )


@meta.command("set")
@click.argument("key")
@click.argument("value")
@_namespace_option
@click.option(
    "--content-type",
    type=click.Choice(CONTENT_TYPES),
    default="json",
    show_default=True,
    help="json: VALUE is parsed as JSON; otherwise it is stored as the text given.",
)
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable); given, they replace the entry's tags.")
@click.option("--description", help="What the entry is for.")
@_expected_option
@_tenant_option
@_actor_option
@_store_option
@_bus_option
@_output_option()
@click.pass_context
def meta_set(
    ctx: click.Context,
    key: str,
    value: str,
    namespace: str,
    content_type: str,
    tags: tuple[str, ...],
    description: str | None,
    expected_version: int | None,
    tenant: str,
    actor: str | None,
    store: str | None,
    bus: str | None,
    output: str,
) -> None:
    """Create the entry KEY of --namespace with VALUE, or change its value (a new version).

    With --expected-version the entry is changed only if it is at that version (exit 1 otherwise, nothing written).
    """
    from onex.exceptions import EntityNotFound
    from onex.metastore.models import MetadataCreate, MetadataUpdate

    parsed = _value(value, content_type)
    settings = _settings(ctx, store=store, bus=bus)
    who = _actor(actor)
    changes: dict[str, Any] = {"value": parsed, "content_type": content_type}
    if tags:
        changes["tags"] = list(tags)
    if description is not None:
        changes["description"] = description

    async def set_(m: Metastore) -> tuple[str, Any]:
        try:
            current = await m.metadata_by_key(tenant, key, namespace=namespace)
        except EntityNotFound:
            if expected_version is not None:
                raise
            body = MetadataCreate.model_validate({"namespace": namespace, "key": key, **changes})
            return "created", await m.create_metadata(tenant, body, actor=who)
        update = MetadataUpdate.model_validate(changes)
        changed = await m.update_metadata(tenant, current.id, update, expected_version=expected_version, actor=who)
        return "updated", changed

    try:
        done, entry = _with_metastore(settings, set_, announce=True)
    except ValidationError as exc:  # a key, namespace or tag pydantic refuses (a control character, say)
        first = exc.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else "value"
        given = {"key": key, "namespace": namespace}.get(field, first.get("input"))
        _fail(f"{field} {given!r}: {first['msg']}", code=2)
    if output == "json":
        emit_json(_dumped(entry))
    else:
        console.print(f"{done} {namespace}/{key} (tenant {tenant}): version {entry.version}", markup=False)


@meta.command("history")
@click.argument("key")
@_namespace_option
@click.option(
    "--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=50, show_default=True, help="At most this many."
)
@click.option(
    "--offset",
    type=click.IntRange(min=0, max=MAX_OFFSET),
    default=0,
    show_default=True,
    help="Skip this many, newest first.",
)
@_tenant_option
@_store_option
@_output_option()
@click.pass_context
def meta_history(
    ctx: click.Context,
    key: str,
    namespace: str,
    limit: int,
    offset: int,
    tenant: str,
    store: str | None,
    output: str,
) -> None:
    """List the versions of the entry KEY: who changed what, when. The latest first."""
    from onex.metastore.models import Kind

    settings = _settings(ctx, store=store)

    async def history(m: Metastore) -> Any:
        entry = await m.metadata_by_key(tenant, key, namespace=namespace)
        return await m.versions(Kind.METADATA, tenant, entry.id, limit=limit, offset=offset)

    page = _with_metastore(settings, history)
    rows = [_dumped(version) for version in page.items]
    emit(
        output,
        rows,
        title=f"{namespace}/{key} (tenant {tenant}): {len(rows)} of {page.total} version(s)",
        page={"total": page.total, "limit": page.limit, "offset": page.offset},
        columns={
            "version": lambda r: r["version"],
            "at": lambda r: r["at"],
            "actor": lambda r: r["actor"],
            "change": lambda r: r["change"],
            "fields": lambda r: ", ".join(r["changed_fields"]),
            "value": lambda r: compact(r["snapshot"].get("value")),
        },
    )


@meta.command("rollback")
@click.argument("key")
@click.argument("version", type=click.IntRange(min=1, max=MAX_VERSION))
@_namespace_option
@_expected_option
@_tenant_option
@_actor_option
@_store_option
@_bus_option
@_output_option()
@click.pass_context
def meta_rollback(
    ctx: click.Context,
    key: str,
    version: int,
    namespace: str,
    expected_version: int | None,
    tenant: str,
    actor: str | None,
    store: str | None,
    bus: str | None,
    output: str,
) -> None:
    """Make version VERSION of the entry KEY current again, as a new version (the history keeps every one)."""
    from onex.metastore.models import Kind

    settings = _settings(ctx, store=store, bus=bus)
    who = _actor(actor)

    async def rollback(m: Metastore) -> Any:
        entry = await m.metadata_by_key(tenant, key, namespace=namespace)
        return await m.rollback(Kind.METADATA, tenant, entry.id, version, expected_version=expected_version, actor=who)

    entry = _with_metastore(settings, rollback, announce=True)
    if output == "json":
        emit_json(_dumped(entry))
    else:
        message = f"{namespace}/{key} (tenant {tenant}) rolled back to version {version}, as version {entry.version}"
        console.print(message, markup=False)


# --- onex flags ------------------------------------------------------------------------------------------------------


@main.group()
def flags() -> None:
    """Feature flags (per tenant): list them, evaluate them for a context."""


@flags.command("list")
@click.option("--tag", help="Only flags with this tag.")
@click.option(
    "--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=100, show_default=True, help="At most this many."
)
@click.option(
    "--offset", type=click.IntRange(min=0, max=MAX_OFFSET), default=0, show_default=True, help="Skip this many."
)
@_tenant_option
@_store_option
@_output_option()
@click.pass_context
def flags_list(
    ctx: click.Context, tag: str | None, limit: int, offset: int, tenant: str, store: str | None, output: str
) -> None:
    """List the tenant's flags: state, whether enabled, rollout, variants, version."""
    settings = _settings(ctx, store=store)
    page = _with_metastore(settings, lambda m: m.list_flags(tenant, tag=tag, limit=limit, offset=offset))
    rows = [_dumped(flag) for flag in page.items]
    emit(
        output,
        rows,
        title=f"flags of tenant {tenant}: {len(rows)} of {page.total}",
        page={"total": page.total, "limit": page.limit, "offset": page.offset},
        columns={
            "name": lambda r: r["name"],
            "state": lambda r: r["state"],
            "enabled": lambda r: "yes" if r["enabled"] else "no",
            "rollout": lambda r: "" if r["rollout"] is None else f"{r['rollout']['percentage']:g} %",
            "rules": lambda r: len(r["rules"]),
            "variants": lambda r: ", ".join(r["variants"]),
            "default": lambda r: compact(r["default_value"]),
            "version": lambda r: r["version"],
            "tags": lambda r: ", ".join(r["tags"]),
        },
    )


def _context(context: str | None, attributes: tuple[str, ...]) -> dict[str, Any]:
    """--context JSON, then each --attr NAME=VALUE over it (VALUE as JSON when it parses, else text)."""
    found: dict[str, Any] = {}
    if context is not None:
        try:
            found = json.loads(context)
        except json.JSONDecodeError as exc:
            _fail(f"--context is not JSON: {exc.msg} at column {exc.colno}", code=2)
        if not isinstance(found, dict):
            _fail('--context must be a JSON object, such as \'{"user_id": "u1"}\'', code=2)
    for attribute in attributes:
        name, sep, raw = attribute.partition("=")
        if not sep or not name:
            _fail(f"--attr {attribute!r} is not NAME=VALUE", code=2)
        try:
            found[name] = json.loads(raw)
        except json.JSONDecodeError:
            found[name] = raw
    return found


@flags.command("eval")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--context", help='The evaluation context as a JSON object, e.g. \'{"user_id": "u1"}\'.')
@click.option(
    "-a", "--attr", "attributes", multiple=True, metavar="NAME=VALUE", help="A context attribute (repeatable)."
)
@click.option("--environment", help="Apply the flags' overrides for this environment (production, say).")
@_tenant_option
@_store_option
@_output_option()
@click.pass_context
def flags_eval(
    ctx: click.Context,
    names: tuple[str, ...],
    context: str | None,
    attributes: tuple[str, ...],
    environment: str | None,
    tenant: str,
    store: str | None,
    output: str,
) -> None:
    """Evaluate the flags NAME... (none: every flag of the tenant) for a context, as the HTTP API does: value,
    variant and reason (STATIC, TARGETING_MATCH, SPLIT, DEFAULT, DISABLED, EXPIRED, ERROR).

    \b
    Exit codes:
      0  every flag evaluated
      1  a flag resolved with reason ERROR (unknown flag, bad context)
      2  usage error
    """
    attributes_ = _context(context, attributes)
    settings = _settings(ctx, store=store)
    resolutions = _with_metastore(
        settings,
        lambda m: m.evaluate_bulk(tenant, list(names) or None, attributes_, environment=environment),
    )
    rows = [resolution.as_dict() for resolution in resolutions.values()]
    emit(
        output,
        rows,
        title=f"flags of tenant {tenant} for {compact(attributes_)}",
        columns={
            "flag": lambda r: r["flag"],
            "value": lambda r: compact(r["value"]),
            "variant": lambda r: r["variant"],
            "reason": lambda r: r["reason"],
            "error": lambda r: r["error_code"] and f"{r['error_code']}: {r['error_message']}",
        },
    )
    if any(row["reason"] == "ERROR" for row in rows):
        sys.exit(1)


# --- onex config-store -----------------------------------------------------------------------------------------------


@main.group("config-store")
def config_store() -> None:
    """Service configurations in the metastore (`onex config` shows the runtime's own settings)."""


@config_store.command("effective")
@click.argument("service")
@click.option(
    "--env",
    "environment",
    type=click.Choice(ENVIRONMENTS),
    help="The environment (required): development, staging or production.",
)
@click.option(
    "--resolve-secrets",
    is_flag=True,
    help="Print secret references' values (env:NAME from this process's environment) instead of the references.",
)
@_tenant_option
@_store_option
@_output_option()
@click.pass_context
def config_store_effective(
    ctx: click.Context,
    service: str,
    environment: str | None,
    resolve_secrets: bool,
    tenant: str,
    store: str | None,
    output: str,
) -> None:
    """Print SERVICE's effective configuration in --env: its active configurations' values merged, later winning."""
    if environment is None:  # not click's required=True, whose message lists the choices over several lines
        _fail("--env is required: development, staging or production", code=2)
    settings = _settings(ctx, store=store)
    effective = _with_metastore(
        settings, lambda m: m.effective_config(tenant, service, environment, resolve_secrets=resolve_secrets)
    )
    if output == "json":
        emit_json(_dumped(effective))
        return
    sources = ", ".join(f"{s.name} v{s.version}" for s in effective.sources) or "none"
    emit(
        output,
        [{"key": key, "value": value} for key, value in effective.values.items()],
        title=f"{service} in {environment} (tenant {tenant}), from: {sources}",
        columns={"key": lambda r: r["key"], "value": lambda r: compact(r["value"])},
    )
