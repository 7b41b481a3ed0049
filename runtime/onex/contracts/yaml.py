"""YAML with positions: ``yaml.safe_load`` semantics, but every mapping, key, value and item remembers its
file:line:column, so that any later stage (``$ref`` resolution, JSON Schema, the models, the semantic checks) can
report a problem where the author has to fix it.

Parsed mappings and sequences are ``_Map`` and ``_Seq``: a ``dict`` and a ``list`` to everyone else, with the
positions on the side. ``_Where`` turns a path through the data (``("states", 2, "state_name")``) back into a
position and a label. Only JSON-compatible YAML is accepted, and alias expansion is measured before anything walks
the data, so a billion-laughs file is refused as ``yaml-bomb`` instead of exhausting memory.

Names starting with ``_`` are shared within ``onex.contracts`` and private to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_YAML_NODES = 100_000


@dataclass(frozen=True, slots=True)
class _Pos:
    """Where a node starts: the file it was read from (absolute), 1-based line and column."""

    file: Path
    line: int
    column: int


class _Map(dict[str, Any]):
    """A YAML mapping that remembers where it, each of its keys and each of its values start.

    A plain ``dict`` for everyone else (jsonschema, pydantic), so positions cost nothing downstream.
    """

    __slots__ = ("key_pos", "pos", "value_pos")

    def __init__(self, pos: _Pos) -> None:
        super().__init__()
        self.pos = pos
        self.key_pos: dict[str, _Pos] = {}
        self.value_pos: dict[str, _Pos] = {}

    def put(self, key: str, value: Any, key_pos: _Pos, value_pos: _Pos) -> None:
        self[key] = value
        self.key_pos[key] = key_pos
        self.value_pos[key] = value_pos


class _Seq(list[Any]):
    """A YAML sequence that remembers where it and each of its items start."""

    __slots__ = ("item_pos", "pos")

    def __init__(self, pos: _Pos) -> None:
        super().__init__()
        self.pos = pos
        self.item_pos: list[_Pos] = []

    def add(self, value: Any, pos: _Pos) -> None:
        self.append(value)
        self.item_pos.append(pos)


def _node_pos(value: Any, fallback: _Pos) -> _Pos:
    # A container's own start is more precise than its parent's record of it once `$ref` swapped it in from
    # another file; scalars only have the parent's record.
    return value.pos if isinstance(value, _Map | _Seq) else fallback


_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` building ``_Map``/``_Seq`` with positions; JSON-compatible values only.

    Dates stay strings (the timestamp resolver is dropped) and ``!!set``, ``!!omap``, ``!!pairs``, ``!!binary``
    are refused, because everything loaded must survive JSON Schema validation and ``onex schema`` editors.
    """

    # Copy the class-level table so that dropping timestamps does not change yaml.SafeLoader for everyone else.
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str, file: Path) -> None:
        super().__init__(text)
        self.file = file

    def pos(self, mark: yaml.Mark | None) -> _Pos:
        if mark is None:  # only nodes built by hand lack marks
            return _Pos(self.file, 1, 1)
        return _Pos(self.file, mark.line + 1, mark.column + 1)


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[_Map]:
    data = _Map(loader.pos(node.start_mark))
    # Yield the empty container first, as SafeConstructor does, so that aliases to it resolve while it fills.
    yield data
    explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)  # `<<: *base` entries now come first; explicit keys after them win
    merged = len(node.value) - explicit
    seen: set[str] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping keys must be strings, found {key!r} (quote it)", key_node.start_mark
            )
        if index >= merged:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        value = loader.construct_object(value_node)
        data.put(key, value, loader.pos(key_node.start_mark), loader.pos(value_node.start_mark))


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[_Seq]:
    data = _Seq(loader.pos(node.start_mark))
    yield data
    for item_node in node.value:
        data.add(loader.construct_object(item_node), loader.pos(item_node.start_mark))


def _refuse(loader: _Loader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"tag {node.tag} is not supported in contracts (JSON-compatible YAML only)", node.start_mark
    )


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
for _tag in ("set", "omap", "pairs", "binary", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)


@dataclass(frozen=True, slots=True)
class _Document:
    """A parsed file: its data (``_Map``/``_Seq``/scalars) and where that data starts."""

    data: Any
    pos: _Pos


class _Problem(Exception):
    """One issue that ends the processing of a file; raised inside a stage, reported by the session."""

    def __init__(self, pos: _Pos, code: str, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.code = code
        self.message = message


def _expanded_size(root: yaml.Node, limit: int, loader: _Loader) -> None:
    """Raise ``yaml-bomb`` when the document, with every alias expanded, has more than ``limit`` nodes.

    PyYAML shares one node per anchor, so parsing a billion-laughs file is cheap and the explosion only happens
    when something walks the result (``$ref`` resolution, JSON Schema, pydantic). Counting sizes memoised per
    node measures the expansion without performing it; the first node (in post-order) over the limit is named.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        known = sizes.get(key)
        if known is not None:
            return known
        if key in active:
            raise _Problem(loader.pos(node.start_mark), "yaml-bomb", "recursive alias: a node contains itself")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = total
        if total > limit:
            raise _Problem(
                loader.pos(node.start_mark),
                "yaml-bomb",
                f"alias expansion makes this node {total:,} nodes large (limit {limit:,}): refusing a YAML bomb",
            )
        return total

    size(root)


_OPENERS = {"flow sequence": "[", "flow mapping": "{"}


def _yaml_hint(exc: yaml.MarkedYAMLError) -> str | None:
    """Plain words for what PyYAML's message usually means, said next to it; ``None`` when there is nothing to add.

    PyYAML names the grammar rule it was in (``while parsing a block mapping``), which is exact and rarely what the
    author did: most often a line is indented one step too far or too little, or a quote or bracket is never closed.
    """
    context, problem = exc.context or "", exc.problem or ""
    opened = exc.context_mark
    where = f"line {opened.line + 1}, column {opened.column + 1}" if opened is not None else "above"
    if problem == "mapping values are not allowed here":
        return (
            "check the indentation of the line above (a key indented deeper than the key before it reads as part "
            "of that key's value), or quote a value that contains ': '"
        )
    if problem.startswith("expected <block end>"):
        return (
            "check the indentation of the line above and of this one: the keys of one mapping, and the items "
            "('- ') of one list, must start in the same column"
        )
    if context == "while scanning a simple key":
        return f"the key at {where} has no ':' after it; add the ':' or check the indentation of the line above"
    if context == "while scanning a quoted scalar":
        if "end of stream" in problem:
            return f"the quote opened at {where} is never closed"
        if "escape" in problem:
            return "in double quotes a backslash starts an escape: use single quotes, or write '\\\\'"
        return f"check the quoted value started at {where}"
    for rule, opener in _OPENERS.items():
        if context == f"while parsing a {rule}":
            closer = "]" if opener == "[" else "}"
            if "<stream end>" in problem:
                return f"the {opener!r} at {where} is never closed with {closer!r}"
            return f"a ',' is missing, or the {opener!r} at {where} is never closed with {closer!r}"
    if "found character '\\t'" in problem:
        return "YAML indents with spaces: replace the tab with spaces"
    if problem.startswith("found character") and "cannot start any token" in problem:
        return "quote a value that starts with this character"
    if problem.startswith("found undefined alias"):
        return "'*name' refers to an anchor '&name' defined before it; quote the value if '*' is meant as text"
    return None


def _parse_yaml(text: str, file: Path, max_nodes: int) -> _Document:
    loader = _Loader(text, file)
    try:
        node = loader.get_single_node()
        if node is None:
            return _Document(None, _Pos(file, 1, 1))
        _expanded_size(node, max_nodes, loader)
        return _Document(loader.construct_document(node), loader.pos(node.start_mark))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        hint = _yaml_hint(exc)
        raise _Problem(loader.pos(mark), "yaml", f"{detail}; {hint}" if hint else detail) from None
    except yaml.YAMLError as exc:  # unmarked (e.g. a reader error on a control character)
        raise _Problem(_Pos(file, 1, 1), "yaml", str(exc)) from None
    except RecursionError:
        raise _Problem(_Pos(file, 1, 1), "yaml-bomb", "nesting too deep to parse") from None
    finally:
        loader.dispose()


def _plain(value: Any) -> Any:
    """Positions off: plain dicts and lists, for the typed models and for callers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _label(steps: Sequence[str | int]) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _locate(data: Any, start: _Pos, steps: Sequence[str | int], *, key: bool = False) -> tuple[_Pos, str]:
    """The position of the node at ``steps`` below ``data`` (or of its key), and a label naming it.

    Walks as far as the path exists, so a missing node is reported at its nearest existing parent. The label
    restarts whenever the walk enters another file's content, so a message about a node is the same whether
    its file was validated on its own or through a contract's ``$ref``, and identical issues collapse.
    """
    node, pos = data, start
    label: list[str | int] = []
    for index, step in enumerate(steps):
        if isinstance(node, _Map) and isinstance(step, str) and step in node:
            if key and index == len(steps) - 1:
                return node.key_pos[step], _label([*label, step])
            child, child_pos = node[step], node.value_pos[step]
        elif isinstance(node, _Seq) and isinstance(step, int) and 0 <= step < len(node):
            child, child_pos = node[step], node.item_pos[step]
        else:
            break
        child_pos = _node_pos(child, child_pos)
        if child_pos.file != pos.file:
            label = []
        else:
            label.append(step)
        node, pos = child, child_pos
    return pos, _label(label)


@dataclass(frozen=True, slots=True)
class _Where:
    """A view of a loaded document below ``prefix``: turns model paths back into file positions."""

    data: Any
    start: _Pos
    prefix: tuple[str | int, ...] = ()

    def child(self, *steps: str | int) -> _Where:
        return _Where(self.data, self.start, self.prefix + steps)

    def at(self, *steps: str | int, key: bool = False) -> _Pos:
        return _locate(self.data, self.start, self.prefix + steps, key=key)[0]

    def locate(self, steps: Sequence[str | int], *, key: bool = False) -> tuple[_Pos, str]:
        return _locate(self.data, self.start, self.prefix + tuple(steps), key=key)


def _display(file: Path, root: Path, given: Mapping[Path, str]) -> str:
    if file in given:
        return given[file]
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return str(file)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(_plain(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_TYPES = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    for python_type, name in _JSON_TYPES.items():
        if isinstance(value, python_type):
            return name
    return type(value).__name__
