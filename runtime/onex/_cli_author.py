"""What a contract author runs: ``onex new node`` (a working node from templates or the seed's requirements shape)
and ``onex codegen models`` (payload models from a contract's inline schemas). Registered on the ``onex`` group
(``onex._cli.main``) when ``onex.cli`` is imported; the work itself is in ``onex.scaffold`` and ``onex.codegen``.
"""

from __future__ import annotations

from pathlib import Path

import click

from onex._cli import _fail, main
from onex.codegen import GENERATED_MARKER, generate_models, generated_models, models_path
from onex.contracts import load_contract
from onex.exceptions import ContractError, OnexError
from onex.scaffold import KINDS, node_spec, render, spec_from_requirements, write
from onex.settings import find_project


@main.group()
def new() -> None:
    """Create a node: contract, node class, payload models and a test, ready to run."""


# --- onex new node (onex.scaffold) ------------------------------------------------------------------------------


@new.command("node")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), help="The node's kind (required unless --from gives node_type).")
@click.option("--consumes", multiple=True, metavar="EVENT", help="An event it handles (repeatable, or A,B).")
@click.option("--publishes", multiple=True, metavar="EVENT", help="An event it publishes (repeatable, or A,B).")
@click.option("--fsm", "fsm", metavar="STATES", help="FSM states in order, e.g. idle,running,done.")
@click.option(
    "--from",
    "requirements",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A requirements file (node_type, operations, features, ...) to build the node from.",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@click.option("--dry-run", is_flag=True, help="List the files it would write; write nothing.")
@click.pass_context
def new_node(
    ctx: click.Context,
    name: str,
    kind: str | None,
    consumes: tuple[str, ...],
    publishes: tuple[str, ...],
    fsm: str | None,
    requirements: Path | None,
    force: bool,
    dry_run: bool,
) -> None:
    """Write a working node NAME: contract, nodes/NAME/v1_0_0/{__init__,node,models}.py and tests/test_NAME.py.

    The project is --root, else the nearest directory above the cwd holding contracts/, else the cwd.
    """
    given = ctx.obj.get("root") if ctx.obj else None
    root = Path(given) if given else (find_project() or Path.cwd())
    states = [fsm] if fsm else []
    try:
        if requirements is not None:
            spec = spec_from_requirements(
                requirements, name, kind=kind, consumes=consumes, publishes=publishes, fsm=states
            )
        elif kind is None:
            raise ValueError("--kind is required (effect, compute, reducer, orchestrator), or --from requirements")
        else:
            spec = node_spec(name, kind, consumes=consumes, publishes=publishes, fsm=states)
    except UnicodeDecodeError as exc:  # a ValueError, but the file's fault, not the command line's
        _fail(f"cannot read the requirements file {requirements}: not UTF-8 text ({exc})")
    except ValueError as exc:
        _fail(str(exc), code=2)
    except ContractError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        _fail(f"{len(exc.issues)} problem(s) in the requirements file {requirements}")
    try:
        files = render(spec, root)
    except ValueError as exc:  # the name is taken by a module of the project
        _fail(str(exc), code=2)
    for todo in spec.todos:
        click.echo(f"TODO: feature {todo!r} has no contract field; left as a TODO in nodes/{name}/v1_0_0/node.py")
    if dry_run:
        for generated in files:
            exists = " (exists; --force overwrites)" if (root / generated.path).exists() else ""
            click.echo(f"would write {generated.path}{exists}")
        return
    try:
        written = write(files, root, force=force)
    except FileExistsError as exc:
        _fail(f"not overwriting {exc} (use --force)")
    for path in written:
        click.echo(f"wrote {path.relative_to(root)}")


@main.group()
def codegen() -> None:
    """Generate code from contracts."""


# --- onex codegen models (onex.codegen) -------------------------------------------------------------------------


@codegen.command("models")
@click.argument("contract", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of nodes/<name>/v<version>/models.py (where `onex validate` looks for them).",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the file is missing or would change (for CI).")
@click.option("--force", is_flag=True, help="Overwrite a file that `onex codegen models` did not generate.")
@click.pass_context
def codegen_models(ctx: click.Context, contract: Path, output: Path | None, check: bool, force: bool) -> None:
    """Generate pydantic payload models from the inline payload_schema of CONTRACT's events.

    One frozen model per event (``Model<EventName>``), recording the schema it was generated from: `onex validate`
    reports it as model-stale once the schema changes. The project is --root, else the nearest directory above the
    cwd holding contracts/, else the cwd.
    """
    given = ctx.obj.get("root") if ctx.obj else None
    root = (Path(given) if given else (find_project() or Path.cwd())).resolve()
    try:
        loaded = load_contract(contract.resolve(), root=root, check_implementations=False)
    except ContractError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        _fail(f"{len(exc.issues)} problem(s) in {contract}; run `onex validate`")
    shown = contract.resolve().relative_to(root).as_posix() if contract.resolve().is_relative_to(root) else contract
    schemas: dict[str, dict[str, object]] = {}
    events = loaded.subcontracts.event_type
    for spec in (*events.consumes, *events.publishes) if events is not None else ():
        if spec.payload_schema is None:
            continue
        if schemas.setdefault(spec.event_name, spec.payload_schema) != spec.payload_schema:
            _fail(f"event {spec.event_name} is declared twice in {shown} with different payload_schemas")
    if not schemas:
        _fail(f"{shown} declares no event with an inline payload_schema: nothing to generate")
    try:
        source = generate_models(schemas, contract=str(shown), title=f"{loaded.name} {loaded.version}")
    except OnexError as exc:
        _fail(f"{shown}: {exc}")
    target = output if output is not None else models_path(root, loaded.name, loaded.version)
    try:
        current: str | None = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if check:
        if current != source:
            state = "missing" if current is None else "out of date"
            _fail(f"{target} is {state}: run onex codegen models {shown}")
        click.echo(f"{target} is up to date")
        return
    if current == source:
        click.echo(f"{target} is up to date")
        return
    if current is not None and not current.startswith(GENERATED_MARKER) and not force:
        _fail(f"not overwriting {target}: onex codegen models did not generate it (use --force)")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source, encoding="utf-8")
    click.echo(f"wrote {target}: {', '.join(cls for cls, _ in generated_models(source).values())}")
