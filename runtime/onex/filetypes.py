"""File types: where and how a stamp is written in each kind of file, in which encoding, and the plugins that add types.

**Handlers.** Every file is handled by one ``FileTypeHandler``: a small protocol with ``detect`` (is this file
mine?), ``comment_syntax`` (the comment a stamp is written in, or ``None``: the file gets a sidecar), ``stamp`` and
``extract`` (put a stamp into unstamped content; find it and give back the content without it). The shipped types
are ``CommentFileType`` instances, one per comment syntax (``_comments.GROUPS``), and ``SIDECAR`` for everything
else. Installed packages add types through the entry-point group ``onex.file_types``: each entry point names a
handler class (instantiated without arguments) or instance, and plugins are asked before the shipped types, in
entry-point name order, so a plugin may also take over an extension. A ``CommentFileType`` (or a subclass) is
stamped by the engine below, streaming large files; a handler with its own ``stamp``/``extract`` is given the whole
content (up to ``WHOLE_LIMIT`` bytes; a larger file gets a sidecar), and onex checks that ``extract`` of what
``stamp`` wrote gives back the stamp and exactly the original bytes before anything is written. A plugin that
cannot be loaded, or that raises, is an error naming its entry point (``StampError``), never a traceback.

**Where a stamp goes.** Right after the *prefix*: a UTF-8 BOM, then whichever of these the syntax has and the
file starts with: a shebang line (not Rust's ``#![``); Python's PEP 263 encoding line on line 1 or 2 (with line 1
when the cookie is on line 2); Dockerfile parser directives; front matter on line 1 of Markdown, markup or CSS
(``---`` YAML, closed by ``---`` or ``...``, or ``+++`` TOML, closed by ``+++``: what static-site generators read),
else an XML declaration ``<?xml ...?>`` or a CSS ``@charset "...";`` (with its newline, if one follows at once).
The stamp is ASCII, ends with the file's newline (CRLF when the first line ending of the content is CRLF) and, in
Go, is followed by a blank line so that it never joins a package doc comment. One case needs more: when the prefix
is the whole file and has no final newline (``#!/bin/sh`` alone), the stamp goes after a newline and itself has
none, and stripping removes that newline too. A stamp is recognised only at that one place and only whole, which is what
makes ``strip_stamp(stamp_bytes(x)) == x`` exact and cheap: only the head of a file is ever parsed.

**Encodings.** A stamp is written in the file's own encoding, or the file gets a sidecar; it is never refused for
its encoding. Text that is valid UTF-8 (ASCII included) is stamped in place, as is text in an encoding it declares:
a PEP 263 coding line in Python, the ``encoding`` of an XML declaration, a CSS ``@charset``, an HTML ``<meta
charset>`` in its first 1,024 bytes. A declared encoding is used when Python knows it, it is stateless and
ASCII-compatible (latin-1, cp1252, koi8-r, Shift_JIS, EUC-JP, GBK, Big5 ...: the ASCII stamp then means the same
bytes) and the head of the content decodes in it; the stamp, being ASCII, goes in as is. A UTF-16 or UTF-32 file
with its BOM (detected with certainty) is stamped in UTF-16/32: decoded, stamped as text, encoded back, after
checking that decoding and encoding give back its exact bytes (files up to ``WHOLE_LIMIT``). Anything else that is
not UTF-8 (latin-1 that declares nothing, a declared encoding that is unknown, stateful such as ISO-2022-JP, or
that the bytes contradict) gets a sidecar: guessing would risk the file. An in-place stamp already there is always
recognised where it is, whatever the rest of the file became, so a restamp replaces it rather than leaving it; only
UTF-16/32 text that grew past ``WHOLE_LIMIT`` or no longer decodes exactly keeps its stamp verified where it is but
refuses a restamp (``not_whole``), as the text around it could not be encoded back exactly. A stamp that is not
where the first lines put it (a line added above it) is never stamped over: the file is refused (``MISPLACED``).

**Formats.** Lightweight: one comment line ``ONEX:uid=<uuid4>,hash=<blake3 hex>,ts=<iso8601 UTC>`` (extra
``,key=value`` pairs of an existing stamp, as the bridge writes them, are recognised and kept, and such a stamp is
verified under the bridge's hash rule too: see ``onex.stamps``; so is the seed's form without ``ts=``, which stays
without it until the hash changes). Rich: YAML with sorted keys between ``===
OmniNode:Metadata ===`` and ``=== /OmniNode:Metadata ===``. Inside ``<!-- -->`` and ``/* */`` a YAML value that
would contain ``--`` or ``*/`` is written double-quoted with that character escaped (``\\x2D``), so the comment can
never end early; non-ASCII is escaped everywhere, so a stamp is ASCII in every file.
"""

from __future__ import annotations

import codecs
import functools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date
from importlib.metadata import entry_points
from typing import Any, Final, Literal, Protocol, runtime_checkable

import yaml

from onex._comments import GROUPS, Syntax, group_for, interpreter_of
from onex._frozen import maker, quick_init
from onex.exceptions import StampError
from onex.files import SNIFF_SIZE, detect_file_type, sniff

__all__ = [
    "ENTRY_POINT_GROUP",
    "SIDECAR",
    "WHOLE_LIMIT",
    "CommentFileType",
    "CommentSyntax",
    "FileTypeHandler",
    "SidecarFileType",
    "Stamp",
    "file_type_plugins",
    "handler_for",
    "reset_file_types",
]

ENTRY_POINT_GROUP: Final = "onex.file_types"
CommentSyntax = Syntax  # the public name plugin authors build their syntax with
MAX_PREFIX: Final = 8 * 1024
MAX_STAMP: Final = 8 * 1024
# Every decision about a file is made from its first HEAD bytes: the prefix, an existing stamp and, after
# removing that stamp, SNIFF_SIZE bytes to classify. So the same content is judged the same way in memory and
# on disk, stamped or not.
HEAD_SIZE: Final = SNIFF_SIZE + MAX_PREFIX + MAX_STAMP
# Content a handler must see whole (UTF-16/32 text, a plugin's own stamp/extract) up to this size; a larger file
# gets a sidecar. Fixed, not a setting: the same file must always be judged the same way.
WHOLE_LIMIT: Final = 4 * 1024 * 1024
_BOM: Final = b"\xef\xbb\xbf"
_OPEN_MARK: Final = b"=== OmniNode:Metadata ==="
_CLOSE_MARK: Final = b"=== /OmniNode:Metadata ==="
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
UID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_CODING: Final = re.compile(rb"[ \t\f]*#[^\n]*?coding[:=][ \t]*[-\w.]+")  # PEP 263
_BLANK_OR_COMMENT: Final = re.compile(rb"[ \t\f]*(?:#[^\n]*)?\r?\n?")
_DIRECTIVE: Final = re.compile(rb"#[ \t]*[A-Za-z][A-Za-z0-9_-]*[ \t]*=[^\n]*\n?")  # Dockerfile
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_FENCES: Final = {b"---": (b"---", b"..."), b"+++": (b"+++",)}  # front matter's opening line -> its closing lines
# Why a file whose stamp is not where its first lines put it is not stamped again (a second stamp would go there).
MISPLACED: Final = (
    "a stamp is not where it belongs (the lines above it changed since it was stamped): remove it, or move it back "
    "below them, and stamp again"
)

Kind = Literal["lightweight", "rich", "sidecar"]


# --- stamps ---------------------------------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class Stamp:
    """A stamp as found in or written to a file. ``fields`` holds the rich or sidecar block (empty otherwise,
    or the extra ``key=value`` pairs of a lightweight line)."""

    uid: str
    hash: str
    ts: str
    kind: Kind
    fields: dict[str, Any] = field(default_factory=dict)


_stamp = maker(Stamp)  # built at about half the cost of the class's call (``onex._frozen.maker``)


# --- parsing the head of a file -------------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class Layout:
    """Where the stamp of some content is or goes. Stripped content is ``content[:keep_end] +
    content[stamp_end:]``; ``syntax is None`` means a sidecar, and then nothing is stripped. With ``whole`` the
    offsets mean nothing: that handler stamps and extracts the whole content (see ``resolve_whole``)."""

    syntax: Syntax | None
    file_type: str
    insert_at: int = 0  # end of the prefix
    keep_end: int = 0
    stamp_end: int = 0
    stamp: Stamp | None = None
    glue: bool = False  # the stripped content ends with an unterminated prefix: see the module docstring
    newline: bytes = b"\n"
    problem: str | None = None  # why a stamp cannot be put in place
    encoding: str = "utf-8"  # the codec the text was judged in ("" when only a stamp already there decided)
    whole: Whole | None = None


def _line_end(head: bytes, start: int, at_eof: bool, limit: int) -> int | None:
    """End (after the newline) of the line at ``start``, or ``None`` if it does not end within ``limit``."""
    end = head.find(b"\n", start, limit)
    if end != -1:
        return end + 1
    if at_eof and len(head) <= limit:
        return len(head)
    return None


def _prefix_end(head: bytes, start: int, at_eof: bool, syntax: Syntax) -> int | None:
    """End of what must stay before the stamp, from ``start`` (after any BOM); ``None`` if it is too long."""
    limit = start + MAX_PREFIX
    if syntax.front_matter:
        # Static-site generators (Jekyll, Hugo, Eleventy) read front matter only on line 1, in any file they render:
        # YAML between "---" lines, or TOML between "+++" lines. It comes before an XML declaration too.
        first = _line_end(head, start, at_eof, limit)
        fence = head[start:first].rstrip(b"\r\n") if first is not None else b""
        if first is not None and fence in _FENCES and first != len(head):
            pos = first
            while (line_end := _line_end(head, pos, at_eof, limit)) is not None and line_end > pos:
                if head[pos:line_end].rstrip(b"\r\n") in _FENCES[fence]:
                    return line_end
                pos = line_end
            # No closing line within the limit: if the file ended, "---" was a thematic break; otherwise the front
            # matter may be longer than we look, and a stamp before it would break it.
            return start if line_end is not None else None
        if syntax.declaration is None:
            return start
    if syntax.declaration is not None:
        match = syntax.declaration.match(head, start)
        if match is None:
            return start
        end = match.end()
        if head.startswith(b"\r\n", end):
            return end + 2
        return end + 1 if head.startswith(b"\n", end) else end
    pos = start
    first = _line_end(head, pos, at_eof, limit)
    if first is None:
        # A first line longer than the limit is fine unless it is one that must stay first.
        starts_prefix = syntax.shebang and head.startswith(b"#!", pos) and not head.startswith(b"#![", pos)
        starts_prefix |= syntax.coding and _CODING.match(head, pos, limit) is not None
        starts_prefix |= syntax.directives and _DIRECTIVE.match(head, pos, limit) is not None
        return None if starts_prefix else start
    line = head[pos:first]
    if syntax.directives:
        while _DIRECTIVE.fullmatch(line) and first > pos:
            pos = first
            next_end = _line_end(head, pos, at_eof, limit)
            if next_end is None:
                return None if _DIRECTIVE.match(head, pos, limit) else pos
            first, line = next_end, head[pos:next_end]
        return pos
    taken = 0
    if (syntax.shebang and line.startswith(b"#!") and not line.startswith(b"#![")) or (
        syntax.coding and _CODING.match(line)
    ):
        taken = first
    if syntax.coding and (taken or _BLANK_OR_COMMENT.fullmatch(line)) and first < len(head):
        # PEP 263: the cookie may be on line 2, and Python only looks there when line 1 is blank or a comment.
        second = _line_end(head, first, at_eof, limit)
        if second is None:
            return None if _CODING.match(head, first, limit) else (taken or start)
        if _CODING.match(head[first:second]):
            return second
    return taken or start


def _parse_lightweight(line: bytes, syntax: Syntax) -> Stamp | None:
    match = syntax.lightweight.fullmatch(line)
    if match is None:
        return None
    uid, digest, ts, extra = (g.decode("ascii") if g is not None else "" for g in match.groups())
    fields = dict(pair.split("=", 1) for pair in extra.split(",")[1:])
    # The seed's form has no ts=: the stamp keeps it so (ts "") and is rendered back without one.
    return _stamp(uid=uid, hash=digest, ts=ts, kind="lightweight", fields=fields)


def as_text(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _too_big(value: object, limit: int = 1000) -> bool:
    """Whether a parsed YAML value has more than ``limit`` nodes, counting a node each time an alias reuses it.

    A few lines of anchors and aliases can describe a structure of billions of nodes (or a cycle); a stamp's
    extra keys are written back out, so such a block is refused rather than expanded.
    """
    stack, count = [value], 0
    while stack:
        count += 1
        if count > limit:
            return True
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def stamp_from_fields(fields: object, kind: Kind) -> Stamp | None:
    """A stamp from a parsed rich or sidecar block, or ``None`` if it lacks what a stamp needs."""
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields) or _too_big(fields):
        return None
    digest, uid = fields.get("hash"), fields.get("uuid")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest) or not isinstance(uid, str):
        return None
    if not UID.fullmatch(uid):
        return None
    ts = as_text(fields.get("last_modified_at", fields.get("created_at", "")))
    return _stamp(uid=uid, hash=digest, ts=ts, kind=kind, fields=dict(fields))


def load_yaml(text: bytes) -> object:
    """Parse untrusted YAML (a safe loader, the C one when PyYAML has it); ``None`` if it does not parse."""
    try:
        return yaml.load(text, Loader=_LOADER)
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an impossible date such as 2025-13-45
        return None


def _match_stamp(head: bytes, pos: int, at_eof: bool, syntax: Syntax) -> tuple[Stamp, int, bool] | None:
    """The stamp starting exactly at ``pos``, its end and whether its last line has a newline."""
    limit = pos + MAX_STAMP
    if head.startswith(syntax.open + b"ONEX:", pos):
        end = _line_end(head, pos, at_eof, limit)
        if end is None:
            return None
        terminated = head.endswith(b"\n", pos, end)
        line = head[pos:end].removesuffix(b"\n").removesuffix(b"\r") if terminated else head[pos:end]
        stamp = _parse_lightweight(line, syntax)
    elif head.startswith(syntax.open + _OPEN_MARK, pos):
        stamp, end, terminated = None, pos, False
        close = syntax.open + _CLOSE_MARK if not syntax.close else _CLOSE_MARK + syntax.close
        body: list[bytes] = []
        first = True
        while (line_end := _line_end(head, end, at_eof, limit)) is not None and line_end > end:
            terminated = head.endswith(b"\n", end, line_end)
            line = head[end:line_end].removesuffix(b"\n").removesuffix(b"\r") if terminated else head[end:line_end]
            end = line_end
            if first:
                if line != syntax.open + _OPEN_MARK:
                    return None
                first = False
            elif line == close:
                stamp = stamp_from_fields(load_yaml(b"\n".join(body)), "rich")
                break
            elif syntax.close:
                body.append(line)
            elif line.startswith(syntax.open):
                body.append(line[len(syntax.open) :])
            else:
                return None
            if not terminated:
                return None
    else:
        return None
    if stamp is None:
        return None
    if syntax.blank_after and terminated:
        for blank in (b"\n", b"\r\n"):
            if head.startswith(blank, end):
                end += len(blank)
                break
    return stamp, end, terminated


def analyse(name: str, head: bytes, at_eof: bool) -> Layout:
    """Everything about some content that its first ``HEAD_SIZE`` bytes decide (``at_eof``: that is all of it)."""
    handler = handler_for(name, head)
    if type(handler) is CommentFileType:  # the common case, on every stamp: no plugin call to guard
        syntax: Syntax | None = handler.syntax
    else:
        syntax = _call(handler, "comment_syntax", handler.comment_syntax, name, head)
    if syntax is None:
        return Layout(None, detect_file_type(name, head))
    if not isinstance(handler, CommentFileType):  # a plugin with its own stamp and extract
        return Layout(syntax, detect_file_type(name, head[:SNIFF_SIZE]), whole=_PluginWhole(handler))
    if head[:1] in _WIDE_FIRST:
        for bom, codec in _WIDE_BOMS:
            if head.startswith(bom):
                return Layout(syntax, detect_file_type(name, b""), encoding=codec, whole=_WideText(bom, codec))
    return comment_layout(syntax, name, head, at_eof)


def comment_layout(syntax: Syntax, name: str, head: bytes, at_eof: bool) -> Layout:
    """The layout of content in ``syntax``: where its prefix ends, its stamp, its encoding (or a sidecar)."""
    start = 3 if head.startswith(_BOM) else 0
    insert_at = _prefix_end(head, start, at_eof, syntax)
    problem = None
    stamp: Stamp | None = None
    glue = False
    if insert_at is None:
        problem = f"cannot place a stamp: the lines that must stay first are longer than {MAX_PREFIX} bytes"
        insert_at = keep_end = stamp_end = 0
    else:
        keep_end = stamp_end = insert_at
        prefix_has_line = insert_at > start
        terminated_prefix = head.endswith(b"\n", 0, insert_at)
        found = _match_stamp(head, insert_at, at_eof, syntax)
        if found is not None:
            stamp, stamp_end, terminated = found
            if terminated:
                keep_end = insert_at
            elif prefix_has_line and terminated_prefix and stamp_end == len(head) and at_eof:
                # Remove the newline we added: CRLF only if the content without it uses CRLF (a prefix may
                # itself end with a lone CR, to which we added LF).
                crlf = head.endswith(b"\r\n", 0, insert_at) and newline_of(head[: insert_at - 2]) == b"\r\n"
                keep_end = insert_at - (2 if crlf else 1)
                glue = True
            else:  # an unterminated stamp only ever follows the newline we put after a prefix
                stamp, stamp_end = None, insert_at
        elif prefix_has_line and not terminated_prefix and insert_at == len(head) and at_eof:
            glue = True
    # Judge the content as it was before stamping, so that stamping never changes the verdict.
    stripped = (head[:keep_end] + head[stamp_end:])[:SNIFF_SIZE] if stamp is not None else head[:SNIFF_SIZE]
    sniffed = sniff(name, stripped, complete=at_eof and len(stripped) < SNIFF_SIZE)
    if sniffed.binary:
        # Binary content with a text extension: never modified, so it gets a sidecar like any binary.
        return Layout(None, sniffed.file_type)
    encoding = "utf-8"
    if not sniffed.utf8:
        if stamp is not None:
            encoding = ""  # an ASCII line at a line start: replacing it is exact in any encoding the file may have
        elif problem is None:
            declared = declared_encoding(syntax, name, stripped, insert_at, complete=at_eof)
            if declared is None:  # neither UTF-8 nor declared: a sidecar, rather than a guess
                if misplaced_stamp(head, Layout(syntax, sniffed.file_type, insert_at)) is None:
                    return Layout(None, sniffed.file_type)
                # ...unless it was stamped in place and its first lines changed since: modified, not unstamped.
                problem = "its stamp is no longer where its first lines put it, and it is not UTF-8: restamp by hand"
            encoding = declared or ""
    newline = newline_of(stripped)
    return Layout(syntax, sniffed.file_type, insert_at, keep_end, stamp_end, stamp, glue, newline, problem, encoding)


def newline_of(text: bytes) -> bytes:
    """The newline a stamp in ``text`` uses: that of its first line ending, LF if it has none."""
    at = text.find(b"\n", 0, SNIFF_SIZE)
    return b"\r\n" if at > 0 and text[at - 1] == 0x0D else b"\n"


# --- writing stamps -------------------------------------------------------------------------------------------

# PyYAML's own implicit-type resolver: a plain scalar is safe only if it reads back as a string.
_resolve_tag: Final[Callable[[type[yaml.nodes.Node], str, tuple[bool, bool]], str]] = yaml.resolver.Resolver().resolve
_PLAIN: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_./+@ -]*[A-Za-z0-9_./+@-])?")
_STR_TAG: Final = "tag:yaml.org,2002:str"


def _yaml_string(text: str, forbidden: tuple[str, ...], *, flow: bool) -> str:
    """``text`` as a YAML scalar: plain when it reads back as the same string, else quoted."""
    clean = not any(seq in text for seq in forbidden)
    if (
        clean
        and _PLAIN.fullmatch(text)
        and not (flow and " " in text)
        and _resolve_tag(yaml.nodes.ScalarNode, text, (True, False)) == _STR_TAG
    ):
        return text
    if clean and text.isascii() and text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    escaped = {seq[0] for seq in forbidden}  # escaping its first character breaks every forbidden sequence
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '\\"':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F and char not in escaped:
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02X}")
        elif code < 0x10000:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    out.append('"')
    return "".join(out)


def _yaml_value(value: object, forbidden: tuple[str, ...], *, flow: bool = False) -> str:
    """One YAML value on one line of ASCII, never containing a sequence in ``forbidden``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value).lower()
        # YAML 1.1 reads "1e+20" as a string: it needs the dot PyYAML's own representer adds.
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_value(v, forbidden, flow=True) for v in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{_yaml_value(k, forbidden, flow=True)}: {_yaml_value(v, forbidden, flow=True)}" for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    return _yaml_string(as_text(value), forbidden, flow=flow)


def yaml_lines(fields: dict[str, Any], forbidden: tuple[str, ...] = ()) -> list[bytes]:
    return [
        f"{_yaml_value(key, forbidden)}: {_yaml_value(fields[key], forbidden)}".encode("ascii")
        for key in sorted(fields)
    ]


def render(stamp: Stamp, syntax: Syntax, newline: bytes) -> bytes:
    """The stamp's lines in ``syntax``, joined by ``newline``, without a final newline."""
    if stamp.kind == "lightweight":
        extra = "".join(f",{k}={v}" for k, v in stamp.fields.items())
        ts = f",ts={stamp.ts}" if stamp.ts else ""
        lines = [syntax.open + f"ONEX:uid={stamp.uid},hash={stamp.hash}{ts}{extra}".encode("ascii") + syntax.close]
    elif syntax.close:
        body = yaml_lines(stamp.fields, syntax.forbidden)
        lines = [syntax.open + _OPEN_MARK, *body, _CLOSE_MARK + syntax.close]
    else:
        body = yaml_lines(stamp.fields)
        lines = [syntax.open + _OPEN_MARK, *(syntax.open + line for line in body), syntax.open + _CLOSE_MARK]
    if syntax.coding and any(_CODING.match(line) for line in lines[:2]):
        raise ValueError("the stamp would read as a PEP 263 encoding declaration")
    return newline.join(lines)


def stamp_unit(stamp: Stamp, layout: Layout, path: str) -> tuple[bytes, bytes]:
    """The bytes that go right after the prefix, or (``layout.glue``) after all the kept content."""
    assert layout.syntax is not None
    try:
        text = render(stamp, layout.syntax, layout.newline)
    except ValueError as exc:
        raise StampError(path, f"cannot stamp: {exc}") from None
    # The stamp must fit where _match_stamp looks for it, or the next run would not find it.
    if len(text) + 2 > MAX_STAMP:
        raise StampError(path, f"the stamp would be longer than {MAX_STAMP} bytes (namespace or author too long?)")
    if layout.glue:
        return b"", layout.newline + text
    return text + layout.newline + (layout.newline if layout.syntax.blank_after else b""), b""


def misplaced_stamp(content: bytes, layout: Layout) -> Stamp | None:
    """A stamp within the first ``MAX_PREFIX`` bytes other than where ``layout`` looks for one; ``None`` when the
    layout found one there, or is a whole-content one (whose handler finds its stamp wherever it is)."""
    syntax = layout.syntax
    assert syntax is not None
    if layout.stamp is not None or layout.whole is not None:
        return None
    # Every stamp holds a capital O ("ONEX:", "OmniNode"): one memchr rules out most unstamped text (stamping checks
    # each such file) at a fraction of what the two searches below cost.
    if content.find(b"O", 0, MAX_PREFIX + MAX_STAMP) < 0:
        return None
    for marker in (syntax.open + b"ONEX:", syntax.open + _OPEN_MARK):
        pos = content.find(marker, 0, MAX_PREFIX + len(marker))  # searched in place: the head is copied only on a find
        if pos < 0:
            continue
        head, at_eof = content[:HEAD_SIZE], len(content) < HEAD_SIZE
        while pos >= 0:
            if pos != layout.insert_at and (found := _match_stamp(head, pos, at_eof, syntax)) is not None:
                return found[0]
            pos = head.find(marker, pos + 1, MAX_PREFIX + len(marker))
    return None


# --- encodings ------------------------------------------------------------------------------------------------

# UTF-32 first: its little-endian BOM starts with UTF-16's.
_WIDE_BOMS: Final = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
_WIDE_FIRST: Final = frozenset({b"\xff", b"\xfe", b"\x00"})
_PEP263: Final = re.compile(rb"^[ \t\f]*#[^\n]*?coding[:=][ \t]*([-\w.]+)", re.MULTILINE)
_XML_ENCODING: Final = re.compile(rb"""<\?xml[^>\n]*?encoding[ \t]*=[ \t]*["']([A-Za-z0-9._:-]{1,64})["']""")
_CSS_CHARSET: Final = re.compile(rb'@charset "([A-Za-z0-9._:-]{1,64})";')
_META_CHARSET: Final = re.compile(rb"""<meta[^>]*?charset[ \t]*=[ \t]*["']?([A-Za-z0-9._:-]{1,64})""", re.IGNORECASE)
# Stateful codecs: an ASCII byte means something else inside a shifted run, so an ASCII line cannot go just anywhere.
_STATEFUL: Final = ("utf_7", "utf-7", "hz", "iso2022")


@functools.cache
def ascii_codec(name: str) -> str | None:
    """Python's name for the codec ``name`` when a stamp (ASCII, at a line start) can go into text in it as is:
    known, stateless and mapping every ASCII byte to itself; ``None`` otherwise."""
    try:
        codec = codecs.lookup(name.strip().lower()).name
    except (LookupError, ValueError):
        return None
    if any(codec.startswith(prefix) for prefix in _STATEFUL):
        return None
    try:
        if bytes(range(128)).decode(codec) != "".join(map(chr, range(128))) or "\n".encode(codec) != b"\n":
            return None
    except (UnicodeError, LookupError, TypeError):
        return None
    return codec


def declared_encoding(syntax: Syntax, name: str, head: bytes, insert_at: int, *, complete: bool) -> str | None:
    """The encoding ``head`` (content without a stamp) declares, if a stamp can be written into it in place:
    see the module docstring. ``insert_at`` is where the stamp goes, which must be a character boundary."""
    if syntax.coding:
        match = _PEP263.search(head, 0, insert_at)  # the cookie is part of the prefix the stamp follows
    elif syntax.declaration is not None:
        match = _XML_ENCODING.match(head, 3 if head.startswith(_BOM) else 0, insert_at) or _CSS_CHARSET.search(
            head, 0, insert_at
        )
    else:
        match = None
    if match is None and syntax.close == b" -->" and detect_file_type(name, b"") != "data":  # HTML, not XML
        match = _META_CHARSET.search(head, 0, 1024)
    if match is None:
        return None
    codec = ascii_codec(match.group(1).decode("ascii"))
    if codec is None:
        return None
    try:
        head[:insert_at].decode(codec)  # a whole number of characters before the stamp
        codecs.getincrementaldecoder(codec)().decode(head, final=complete and len(head) < SNIFF_SIZE)
    except UnicodeDecodeError:
        return None  # the bytes contradict the declaration
    return codec


# --- whole content: UTF-16/32 text, plugins -------------------------------------------------------------------


class _NotInPlace(ValueError):
    """Content that cannot take a stamp in place after all: it gets a sidecar."""


class Whole(Protocol):
    """What stamps content that must be seen whole: ``extract`` and ``stamp`` as in ``FileTypeHandler``."""

    def extract(self, content: bytes, *, file_name: str) -> tuple[Stamp | None, bytes]: ...

    def stamp(self, content: bytes, stamp: Stamp, *, file_name: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _WideText:
    """UTF-16/32 text with its BOM: stamped as its UTF-8 transcription, then encoded back."""

    bom: bytes
    codec: str

    def _view(self, content: bytes) -> bytes:
        try:
            text = content[len(self.bom) :].decode(self.codec)
            view = text.encode("utf-8")
        except UnicodeError:
            raise _NotInPlace(f"not valid {self.codec}") from None
        if self.bom + text.encode(self.codec) != content:
            raise _NotInPlace(f"{self.codec} does not give back the same bytes")
        return view

    def _layout(self, view: bytes, file_name: str) -> Layout:
        handler = handler_for(file_name, view[:HEAD_SIZE])
        syntax = handler.comment_syntax(file_name, view[:HEAD_SIZE]) if isinstance(handler, CommentFileType) else None
        if syntax is None:
            raise _NotInPlace("no comment syntax")
        layout = comment_layout(syntax, file_name, view[:HEAD_SIZE], len(view) < HEAD_SIZE)
        if layout.syntax is None or layout.problem is not None or layout.encoding != "utf-8":
            raise _NotInPlace(layout.problem or "not text")
        return layout

    def _encode(self, view: bytes) -> bytes:
        return self.bom + view.decode("utf-8").encode(self.codec)

    def extract(self, content: bytes, *, file_name: str) -> tuple[Stamp | None, bytes]:
        view = self._view(content)
        layout = self._layout(view, file_name)
        if layout.stamp is None:
            return None, content
        return layout.stamp, self._encode(view[: layout.keep_end] + view[layout.stamp_end :])

    def stamp_in(self, head: bytes, layout: Layout, *, at_eof: bool, why: str) -> Layout | None:
        """The stamp at the start of ``head`` (``not_whole``) as a layout in the encoded bytes, or ``None``."""
        assert layout.syntax is not None
        limit = len(self.bom) + 4 * (MAX_PREFIX + MAX_STAMP)  # where a stamp can end: 4 bytes a character at most
        ended = at_eof and len(head) <= limit
        # Only the prefix and the stamp need to decode; what a replaced character misplaces is caught below.
        text = codecs.getincrementaldecoder(self.codec)("replace").decode(head[len(self.bom) : limit], final=ended)
        view = text.encode("utf-8")
        insert_at = _prefix_end(view, 0, ended, layout.syntax)
        found = None if insert_at is None else _match_stamp(view, insert_at, ended, layout.syntax)
        if insert_at is None or found is None or not found[2]:  # none, or the unterminated kind at the very end
            return None
        keep_end = len(self.bom) + len(view[:insert_at].decode("utf-8").encode(self.codec))
        encoded = self.bom + view[: found[1]].decode("utf-8").encode(self.codec)
        if not head.startswith(encoded):
            return None
        problem = f"its {self.codec} stamp cannot be replaced in place ({why}): remove it to get a sidecar"
        stamp_end = len(encoded)
        return Layout(
            layout.syntax,
            layout.file_type,
            keep_end,
            keep_end,
            stamp_end,
            found[0],
            problem=problem,
            encoding=self.codec,
        )

    def stamp(self, content: bytes, stamp: Stamp, *, file_name: str) -> bytes:
        view = self._view(content)
        layout = self._layout(view, file_name)
        before, after = stamp_unit(stamp, layout, file_name)
        if layout.glue:
            return self._encode(view[: layout.keep_end] + after)
        return self._encode(view[: layout.insert_at] + before + view[layout.stamp_end :])


@dataclass(frozen=True, slots=True)
class _PluginWhole:
    """A plugin's own ``extract``/``stamp``; whatever it raises becomes a ``StampError`` naming it."""

    handler: FileTypeHandler

    def extract(self, content: bytes, *, file_name: str) -> tuple[Stamp | None, bytes]:
        found = _call(self.handler, "extract", self.handler.extract, content, file_name=file_name)
        if not (isinstance(found, tuple) and len(found) == 2 and isinstance(found[1], bytes)):
            raise StampError(_who(self.handler), "extract must return (Stamp or None, bytes)")
        return found

    def stamp(self, content: bytes, stamp: Stamp, *, file_name: str) -> bytes:
        out = _call(self.handler, "stamp", self.handler.stamp, content, stamp, file_name=file_name)
        if not isinstance(out, bytes):
            raise StampError(_who(self.handler), "stamp must return bytes")
        return out


def resolve_whole(layout: Layout, content: bytes, file_name: str) -> tuple[Layout, bytes | None]:
    """For a layout that needs the whole content: the layout with the stamp found, and the content without it. When
    it cannot be stamped in place, or is larger than ``WHOLE_LIMIT``: ``not_whole`` (and ``None``)."""
    assert layout.whole is not None
    if len(content) > WHOLE_LIMIT:
        return not_whole(layout, content[:HEAD_SIZE], at_eof=False, why=f"larger than {WHOLE_LIMIT} bytes"), None
    try:
        stamp, stripped = layout.whole.extract(content, file_name=file_name)
    except _NotInPlace as exc:
        return not_whole(layout, content[:HEAD_SIZE], at_eof=len(content) <= HEAD_SIZE, why=str(exc)), None
    return replace(layout, stamp=stamp), stripped


def not_whole(layout: Layout, head: bytes, *, at_eof: bool, why: str) -> Layout:
    """The layout of content that needs to be seen whole but cannot be (``why``), from its first ``HEAD_SIZE`` bytes:
    a sidecar, unless an in-place stamp is already there (UTF-16/32 text stamped before it grew or was damaged).
    That stamp is kept where it is, with its offsets in the file's own bytes, so it is verified (the rest is hashed
    as it is) rather than left stale beside a sidecar; content it still matches is ``unchanged``, and a restamp of
    anything else is refused (``problem``), as the text around it can no longer be re-encoded exactly."""
    if isinstance(layout.whole, _WideText):
        found = layout.whole.stamp_in(head, layout, at_eof=at_eof, why=why)
        if found is not None:
            return found
    return Layout(None, layout.file_type)


def stamp_whole(layout: Layout, stripped: bytes, stamp: Stamp, file_name: str) -> bytes:
    """``stripped`` with ``stamp`` put in by ``layout.whole``, checked to read back exactly; ``StampError`` if not."""
    assert layout.whole is not None
    try:
        out = layout.whole.stamp(stripped, stamp, file_name=file_name)
        found, back = layout.whole.extract(out, file_name=file_name)
    except _NotInPlace as exc:
        raise StampError(file_name, f"cannot stamp in place: {exc}") from None
    if back != stripped or found is None or (found.uid, found.hash) != (stamp.uid, stamp.hash):
        who = _who(layout.whole.handler) if isinstance(layout.whole, _PluginWhole) else layout.encoding
        raise StampError(file_name, f"{who}: the stamp written does not read back exactly; nothing written")
    return out


# --- handlers -------------------------------------------------------------------------------------------------


@runtime_checkable
class FileTypeHandler(Protocol):
    """A file type: which files it takes, how a stamp is written in them, and (for handlers that are not a
    ``CommentFileType``) how it is put in and taken out. Plugins implement this; see the module docstring."""

    @property
    def name(self) -> str:
        """Shown in messages (and errors): a plugin's is best its entry point's name."""
        ...

    def detect(self, file_name: str, head: bytes) -> bool:
        """Whether this handler takes the file ``file_name`` (a base name) whose content starts with ``head``."""
        ...

    def comment_syntax(self, file_name: str, head: bytes) -> Syntax | None:
        """The comment a stamp is written in, or ``None``: the file gets a sidecar and is never modified."""
        ...

    def extract(self, content: bytes, *, file_name: str) -> tuple[Stamp | None, bytes]:
        """The stamp in ``content`` (``None`` if none) and ``content`` without it: exactly the bytes it had before
        it was stamped."""
        ...

    def stamp(self, content: bytes, stamp: Stamp, *, file_name: str) -> bytes:
        """``content`` (unstamped) with ``stamp`` written in; ``extract`` must give back both exactly."""
        ...


@dataclass(frozen=True)
class CommentFileType:
    """A file type whose stamp is a comment in ``syntax``, for files with one of ``extensions`` (``".py .pyi"``),
    one of ``names`` (``"makefile"``, lower case) or, without an extension, a shebang naming one of
    ``interpreters``. Subclass it (or build one) in a plugin to get the engine's stamping, streaming included."""

    name: str
    syntax: Syntax
    extensions: str = ""
    names: str = ""
    interpreters: str = ""

    def detect(self, file_name: str, head: bytes) -> bool:
        lowered = file_name.lower()
        if lowered in self.names.split():
            return True
        dot = lowered.rfind(".")
        if 0 < dot < len(lowered) - 1:
            return lowered[dot:] in self.extensions.split()
        return interpreter_of(head) in self.interpreters.split()

    def comment_syntax(self, file_name: str, head: bytes) -> Syntax | None:
        return self.syntax

    def extract(self, content: bytes, *, file_name: str) -> tuple[Stamp | None, bytes]:
        layout = comment_layout(self.syntax, file_name, content[:HEAD_SIZE], len(content) < HEAD_SIZE)
        if layout.stamp is None:
            return None, content
        return layout.stamp, content[: layout.keep_end] + content[layout.stamp_end :]

    def stamp(self, content: bytes, stamp: Stamp, *, file_name: str) -> bytes:
        layout = comment_layout(self.syntax, file_name, content[:HEAD_SIZE], len(content) < HEAD_SIZE)
        if layout.syntax is None or layout.problem is not None:
            raise _NotInPlace(layout.problem or "binary, or text in an encoding it does not declare")
        before, after = stamp_unit(stamp, layout, file_name)
        if layout.glue:
            return content[: layout.keep_end] + after
        return content[: layout.insert_at] + before + content[layout.stamp_end :]


@dataclass(frozen=True)
class SidecarFileType:
    """Every file no other handler takes: no comment syntax, so a sidecar; its content is never modified."""

    name: str = "sidecar"

    def detect(self, file_name: str, head: bytes) -> bool:
        return True

    def comment_syntax(self, file_name: str, head: bytes) -> Syntax | None:
        return None

    def extract(self, content: bytes, *, file_name: str) -> tuple[Stamp | None, bytes]:
        return None, content

    def stamp(self, content: bytes, stamp: Stamp, *, file_name: str) -> bytes:
        raise _NotInPlace("a sidecar type is never stamped in place")


SIDECAR: Final = SidecarFileType()
_SHIPPED: Final = {name: CommentFileType(name, syntax, *keys) for name, syntax, *keys in GROUPS}
_plugins: list[FileTypeHandler] | None = None
_plugins_lock = threading.Lock()


def _who(handler: object) -> str:
    return f"file type plugin {getattr(handler, 'name', type(handler).__name__)!r}"


def _call(handler: FileTypeHandler, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a handler's method; a plugin's exception becomes a ``StampError`` naming the plugin and the method."""
    if type(handler) in (CommentFileType, SidecarFileType):  # shipped: a bug is a bug, not a plugin's error
        return method(*args, **kwargs)
    try:
        return method(*args, **kwargs)
    except (StampError, _NotInPlace):
        raise
    except Exception as exc:  # a plugin may raise anything; the user needs its name, not a traceback
        raise StampError(_who(handler), f"{what} raised {type(exc).__name__}: {exc}") from None


def _load(entry: Any) -> FileTypeHandler:
    where = f"entry point {entry.name!r} = {entry.value!r} (group {ENTRY_POINT_GROUP})"
    try:
        obj = entry.load()
        handler = obj() if isinstance(obj, type) else obj
    except Exception as exc:  # a broken plugin is a message naming it, not a traceback
        raise StampError(where, f"cannot load the file type plugin: {type(exc).__name__}: {exc}") from None
    if not isinstance(handler, FileTypeHandler) or not isinstance(getattr(handler, "name", None), str):
        raise StampError(where, "not a file type handler (needs name, detect, comment_syntax, extract and stamp)")
    return handler


def file_type_plugins() -> list[FileTypeHandler]:
    """The handlers installed packages add (entry-point group ``onex.file_types``), loaded once per process, in
    entry-point name order. ``StampError`` naming the entry point when one cannot be loaded (and on every later
    call, until ``reset_file_types``)."""
    global _plugins
    if _plugins is None:
        with _plugins_lock:
            if _plugins is None:
                found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
                _plugins = [_load(entry) for entry in found]
    return _plugins


def reset_file_types() -> None:
    """Forget the loaded plugins, so the next use looks for them again (for tests)."""
    global _plugins
    with _plugins_lock:
        _plugins = None


def handler_for(file_name: str, head: bytes) -> FileTypeHandler:
    """The handler of a file: the first plugin whose ``detect`` takes it, else the shipped type, else ``SIDECAR``."""
    for plugin in _plugins if _plugins is not None else file_type_plugins():
        if _call(plugin, "detect", plugin.detect, file_name, head):
            return plugin
    group = group_for(file_name, head)
    return SIDECAR if group is None else _SHIPPED[group]
