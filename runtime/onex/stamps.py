"""BLAKE3 metadata stamps: hash, stamp, strip and verify files, in place or in a sidecar.

**The hash** is BLAKE3 of the content with the stamp removed, so a stamped file hashes the same as the original
and ``verify`` needs nothing but the file. Files up to ``IN_MEMORY_LIMIT`` are read whole; larger ones are
hashed in ``CHUNK_SIZE`` chunks from one reused buffer, so memory stays flat for multi-gigabyte files (and they
are never mapped: a file truncated under a mapping would kill the process with SIGBUS). In-memory content from
``THREADS_FROM`` bytes up is hashed with BLAKE3's threads; streamed chunks are not, as that measured slower.

**Where a stamp goes.** Right after the *prefix*: a UTF-8 BOM, then whichever of these the syntax has and the
file starts with: a shebang line (not Rust's ``#![``); Python's PEP 263 encoding line on line 1 or 2 (with line 1
when the cookie is on line 2); Dockerfile parser directives; an XML declaration ``<?xml ...?>`` or a CSS
``@charset "...";`` (with its newline, if one follows at once); Markdown YAML front matter. The stamp is ASCII,
ends with the file's newline (CRLF when the first line ending of the content is CRLF) and, in Go, is followed by
a blank line so that it never joins a package doc comment. One case needs more: when the prefix is the whole
file and has no final newline (``#!/bin/sh`` alone), the stamp goes after a newline and itself has none, and
stripping removes that newline too. A stamp is recognised only at that one place and only whole, which is what
makes ``strip_stamp(stamp_bytes(x)) == x`` exact and cheap: only the head of a file is ever parsed.

**Formats.** Lightweight: one comment line ``ONEX:uid=<uuid4>,hash=<blake3 hex>,ts=<iso8601 UTC>`` (extra
``,key=value`` pairs of an existing stamp, as the bridge writes them, are recognised and kept). Rich: YAML with
sorted keys between ``=== OmniNode:Metadata ===`` and ``=== /OmniNode:Metadata ===``; keys ``metadata_version``,
``protocol_version``, ``name``, ``namespace``, ``uuid``, ``author``, ``created_at``, ``last_modified_at``,
``hash``, ``file_type`` (a ``files.FILE_TYPES`` category) and ``size`` (bytes without the stamp); other keys of
an existing block are kept. Comment syntax by extension or name:

========  ===============================================================================================
``#``     Python, shell, Ruby, Perl, R, YAML, TOML, Makefile, Dockerfile, CMake, ``.cfg``/``.conf``/``.env``,
          ignore files, and plain text (``.txt``: requirements.txt, robots.txt and CMakeLists.txt all read
          ``#`` as a comment; in prose the line is visible but harmless)
``//``    JavaScript, TypeScript, Go, Rust, C, C++, Java, Kotlin, Scala, Swift, C#, Dart, Groovy, protobuf, JSONC
``--``    SQL, Lua, Haskell
``<!--``  Markdown, HTML, XML, SVG, Vue, Svelte: ``<!-- ONEX:... -->``; a rich block is one comment whose
          first line is ``<!-- === OmniNode:Metadata ===`` and last ``=== /OmniNode:Metadata === -->``
``/*``    CSS, SCSS, Less, formed the same way
========  ===============================================================================================

An extensionless file with a shebang takes its syntax from the interpreter (python, sh, node, lua ...).
Inside ``<!-- -->`` and ``/* */`` a YAML value that would contain ``--`` or ``*/`` is written double-quoted with
that character escaped (``\\x2D``), so the comment can never end early.

**Sidecars.** Files with no comment syntax (JSON, CSV, images, archives, unknown extensions) and binary content
get ``<file>.onex.yaml`` holding the rich fields; their bytes are never modified and their hash is of the whole
content. Binary means: magic bytes of a binary format, or a NUL byte, in the first ``files.SNIFF_SIZE`` bytes
(of the content with the stamp removed), whatever the extension says; so a PNG named ``x.py`` gets a sidecar.

**Refusals** (``stamp_file`` returns ``failed``, ``stamp_bytes`` raises ``StampError``): text with a comment
syntax whose first ``SNIFF_SIZE`` bytes are not valid UTF-8 (no NUL, so not binary: a Latin-1 ``.py``, say); we
do not guess encodings, and a sidecar would silently change what the user asked for. Re-encode it as UTF-8. Also
refused: a prefix longer than ``MAX_PREFIX`` (front matter that does not close within it, say) and a stamp longer
than ``MAX_STAMP``. The rest of a large file is not validated; the stamp is ASCII, so inserting it cannot corrupt
any ASCII-compatible encoding.

**Restamping.** Content whose hash matches its stamp, stamped the same kind with the same options, is left alone
byte for byte (status ``unchanged``: same uid, same timestamps). Otherwise the old stamp is replaced: the uid and
``created_at`` are kept, the hash and ``ts``/``last_modified_at`` are new. Changing ``rich``, ``namespace`` or
``author`` counts as a change. Empty files are stamped like any other (an empty ``.py`` holding only a stamp is
valid Python; its hash is BLAKE3 of no bytes).

**Writes** are atomic: a temporary file in the same directory (``.<name>.onex-tmp.<pid>.<random>``, see
``files.temp_prefix``), fsynced, given the original's mode (and owner, when permitted), ``os.replace``\\ d over the
original, then the directory is fsynced. Not kept: hard links (the other names keep the old content, as with any
editor's save), extended attributes and ACLs. A symlink is stamped through: its target is replaced and the link
stays. A stamper killed mid-write leaves its temporary file behind; the walk of a later ``onex stamp`` removes it
once its pid is gone (``files.is_stale_temp``), and nothing ever stamps or verifies one.

**Files in use are not replaced.** A rename swaps the inode under a process that has the file open: a writer
appending to a log would go on writing into the old, unlinked inode and every line after the stamp would be lost.
So, on Linux, the stamper takes a write lease (``F_SETLEASE``, ``F_WRLCK``) on the descriptor it read the original
through, just before the rename, holds it across the rename and releases it after. The kernel grants a write lease
only when no other open file description of the file exists, so a file open anywhere else, for reading, writing or
execution, is reported ``busy`` (``BUSY``) and left as it was; the stamping effect makes that a retryable failure.
While the lease is held, another process's open waits for it; the stamper sees the lease being broken
(``F_GETLEASE``) and gives up (``busy`` again) rather than rename the file from under the opener. The lease is
taken late, after the content is read and the temporary file written, not for the whole stamp: holding it longer
would make every reader of the file wait for the stamp, and the snapshot comparison below already catches anyone
who opened, wrote and closed the file in between. Sidecars take no lease: the original is only read, and the sidecar
is onex's own file. A file already stamped (``unchanged``) or a ``dry_run`` never needs one, so they are reported
as such even when the file is open elsewhere.

Leases need the caller to own the file or hold CAP_LEASE (root does), and some file systems (NFS, some FUSE) or
``/proc/sys/fs/leases-enable=0`` refuse them (EINVAL, ENOLCK, EACCES ...), as does every other OS. There the
stamper falls back to what the lease also backs up: before the rename the file is stat'ed again, and if device,
inode, size, mtime or ctime moved since it was opened (before it was read), it changed while it was being stamped
and is left alone (``failed``, "changed while stamping"). ctime cannot be set from user space, so a rewrite that
restores mtime is still caught. What the fallback cannot see is a writer that holds the file open without writing
during the stamp and writes after the rename (into the old inode), and neither way can catch an open in the
microseconds between the last check and the rename, as POSIX has no compare-and-rename.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from blake3 import blake3

from onex._comments import Syntax, syntax_for
from onex.envelope import new_id
from onex.exceptions import StampError
from onex.files import (
    SIDECAR_SUFFIX,
    SNIFF_SIZE,
    describe_os_error,
    detect_file_type,
    is_sidecar,
    is_temp,
    sniff,
    temp_prefix,
    within,
)

if sys.platform != "win32":
    import fcntl

__all__ = [
    "BUSY",
    "CHUNK_SIZE",
    "DEFAULT_AUTHOR",
    "DEFAULT_NAMESPACE",
    "METADATA_VERSION",
    "PROTOCOL_VERSION",
    "Stamp",
    "StampResult",
    "VerifyResult",
    "find_stamp",
    "hash_bytes",
    "hash_file",
    "parse_sidecar",
    "render_sidecar",
    "sidecar_path",
    "stamp_bytes",
    "stamp_file",
    "strip_stamp",
    "verify_bytes",
    "verify_file",
]

# The reason given for a file not replaced because another process has it open (``StampResult.status == "busy"``).
BUSY: Final = "busy: open in another process, retry later"
METADATA_VERSION: Final = "0.1.0"
PROTOCOL_VERSION: Final = "0.1.0"
DEFAULT_NAMESPACE: Final = "onex.default"
DEFAULT_AUTHOR: Final = "onex"

CHUNK_SIZE: Final = 1024 * 1024
# In-memory content this large is hashed with BLAKE3's threads (64 MiB: 5.5 ms instead of 11.8 ms on two cores);
# below it the thread pool costs more than it saves.
THREADS_FROM: Final = 8 * 1024 * 1024
MAX_PREFIX: Final = 8 * 1024
MAX_STAMP: Final = 8 * 1024
# Every decision about a file is made from its first HEAD bytes: the prefix, an existing stamp and, after
# removing that stamp, SNIFF_SIZE bytes to classify. So the same content is judged the same way in memory and
# on disk, stamped or not.
HEAD_SIZE: Final = SNIFF_SIZE + MAX_PREFIX + MAX_STAMP
# Files up to this size are read whole (one read, one hash call, one write); larger ones are streamed, twice
# when they are stamped, through one CHUNK_SIZE buffer. Memory per file is bounded by this, not by file size.
IN_MEMORY_LIMIT: int = 4 * 1024 * 1024

_BOM: Final = b"\xef\xbb\xbf"
_OPEN_MARK: Final = b"=== OmniNode:Metadata ==="
_CLOSE_MARK: Final = b"=== /OmniNode:Metadata ==="
RICH_KEYS = _RICH_KEYS = (  # the metadata protocol's required fields (public: the gateway checks them)
    "metadata_version",
    "protocol_version",
    "name",
    "namespace",
    "uuid",
    "author",
    "created_at",
    "last_modified_at",
    "hash",
    "file_type",
    "size",
)
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_UID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_CODING: Final = re.compile(rb"[ \t\f]*#[^\n]*?coding[:=][ \t]*[-\w.]+")  # PEP 263
_BLANK_OR_COMMENT: Final = re.compile(rb"[ \t\f]*(?:#[^\n]*)?\r?\n?")
_DIRECTIVE: Final = re.compile(rb"#[ \t]*[A-Za-z][A-Za-z0-9_-]*[ \t]*=[^\n]*\n?")  # Dockerfile
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Kind = Literal["lightweight", "rich", "sidecar"]


# --- public values --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stamp:
    """A stamp as found in or written to a file. ``fields`` holds the rich or sidecar block (empty otherwise,
    or the extra ``key=value`` pairs of a lightweight line)."""

    uid: str
    hash: str
    ts: str
    kind: Kind
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StampResult:
    """What ``stamp_file`` did to one file. ``size`` counts the content without its stamp (0 when unknown);
    ``error`` names the path and says what went wrong when ``status == "failed"``, why it was skipped, or (``busy``)
    that another process has it open, so it was left as it was: try again later."""

    path: str
    status: Literal["stamped", "unchanged", "skipped", "busy", "failed"]
    stamp: Stamp | None
    file_type: str
    size: int
    error: str | None = None
    hash_seconds: float = 0.0  # reading and BLAKE3-hashing the content (0 when it was not read)


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify_file`` found: ``expected`` is the stamp's hash, ``actual`` the content's."""

    path: str
    status: Literal["valid", "modified", "unstamped", "error"]
    expected: str | None
    actual: str | None
    error: str | None = None


# --- parsing the head of a file -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the stamp of some content is or goes. Stripped content is ``content[:keep_end] +
    content[stamp_end:]``; ``syntax is None`` means a sidecar, and then nothing is stripped."""

    syntax: Syntax | None
    file_type: str
    insert_at: int = 0  # end of the prefix
    keep_end: int = 0
    stamp_end: int = 0
    stamp: Stamp | None = None
    glue: bool = False  # the stripped content ends with an unterminated prefix: see the module docstring
    newline: bytes = b"\n"
    problem: str | None = None  # why a stamp cannot be put in place


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
    if syntax.declaration is not None:
        match = syntax.declaration.match(head, start)
        if match is None:
            return start
        end = match.end()
        if head.startswith(b"\r\n", end):
            return end + 2
        return end + 1 if head.startswith(b"\n", end) else end
    if syntax.front_matter:
        first = _line_end(head, start, at_eof, limit)
        if first is None or head[start:first].rstrip(b"\r\n") != b"---" or first == len(head):
            return start
        pos = first
        while (line_end := _line_end(head, pos, at_eof, limit)) is not None and line_end > pos:
            if head[pos:line_end].rstrip(b"\r\n") in (b"---", b"..."):
                return line_end
            pos = line_end
        # No closing line within the limit: if the file ended, "---" was a thematic break; otherwise the front
        # matter may be longer than we look, and a stamp before it would break it.
        return start if line_end is not None else None
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
    uid, digest, ts, extra = (g.decode("ascii") for g in match.groups())
    fields = dict(pair.split("=", 1) for pair in extra.split(",")[1:])
    return Stamp(uid=uid, hash=digest, ts=ts, kind="lightweight", fields=fields)


def _as_text(value: object) -> str:
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


def _stamp_from_fields(fields: object, kind: Kind) -> Stamp | None:
    """A stamp from a parsed rich or sidecar block, or ``None`` if it lacks what a stamp needs."""
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields) or _too_big(fields):
        return None
    digest, uid = fields.get("hash"), fields.get("uuid")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest) or not isinstance(uid, str):
        return None
    if not _UID.fullmatch(uid):
        return None
    ts = _as_text(fields.get("last_modified_at", fields.get("created_at", "")))
    return Stamp(uid=uid, hash=digest, ts=ts, kind=kind, fields=dict(fields))


def _load_yaml(text: bytes) -> object:
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
                stamp = _stamp_from_fields(_load_yaml(b"\n".join(body)), "rich")
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


def _analyse(name: str, head: bytes, at_eof: bool) -> _Layout:
    """Everything about some content that its first ``HEAD_SIZE`` bytes decide (``at_eof``: that is all of it)."""
    syntax = syntax_for(name, head)
    if syntax is None:
        return _Layout(None, detect_file_type(name, head))
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
                crlf = head.endswith(b"\r\n", 0, insert_at) and _newline_of(head[: insert_at - 2]) == b"\r\n"
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
        return _Layout(None, sniffed.file_type)
    if problem is None and not sniffed.utf8:
        problem = "not valid UTF-8 text; in-place stamps need UTF-8 (re-encode the file)"
    newline = _newline_of(stripped)
    return _Layout(syntax, sniffed.file_type, insert_at, keep_end, stamp_end, stamp, glue, newline, problem)


def _newline_of(text: bytes) -> bytes:
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
    return _yaml_string(_as_text(value), forbidden, flow=flow)


def _yaml_lines(fields: dict[str, Any], forbidden: tuple[str, ...] = ()) -> list[bytes]:
    return [
        f"{_yaml_value(key, forbidden)}: {_yaml_value(fields[key], forbidden)}".encode("ascii")
        for key in sorted(fields)
    ]


def _render(stamp: Stamp, syntax: Syntax, newline: bytes) -> bytes:
    """The stamp's lines in ``syntax``, joined by ``newline``, without a final newline."""
    if stamp.kind == "lightweight":
        extra = "".join(f",{k}={v}" for k, v in stamp.fields.items())
        lines = [
            syntax.open + f"ONEX:uid={stamp.uid},hash={stamp.hash},ts={stamp.ts}{extra}".encode("ascii") + syntax.close
        ]
    elif syntax.close:
        body = _yaml_lines(stamp.fields, syntax.forbidden)
        lines = [syntax.open + _OPEN_MARK, *body, _CLOSE_MARK + syntax.close]
    else:
        body = _yaml_lines(stamp.fields)
        lines = [syntax.open + _OPEN_MARK, *(syntax.open + line for line in body), syntax.open + _CLOSE_MARK]
    if syntax.coding and any(_CODING.match(line) for line in lines[:2]):
        raise ValueError("the stamp would read as a PEP 263 encoding declaration")
    return newline.join(lines)


def render_sidecar(stamp: Stamp) -> bytes:
    """The content of a sidecar file for ``stamp``."""
    header = b"# onex metadata stamp of the file this one is named after; `onex verify` checks it\n"
    return header + b"".join(line + b"\n" for line in _yaml_lines(stamp.fields))


def parse_sidecar(data: bytes, path: str | os.PathLike[str] = "<sidecar>") -> Stamp:
    """The stamp in a sidecar's content; ``StampError`` naming ``path`` if it is not one."""
    stamp = _stamp_from_fields(_load_yaml(data), "sidecar")
    if stamp is None:
        raise StampError(
            os.fspath(path), "not an onex sidecar (needs a 64-hex `hash` and a `uuid`); delete it to restamp"
        )
    return stamp


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the sidecar of ``path`` lives: next to the file, ``<file>.onex.yaml``."""
    return Path(os.fspath(path) + SIDECAR_SUFFIX)


def _now_iso(now: datetime | None) -> str:
    moment = datetime.now(UTC) if now is None else now
    if moment.tzinfo is None:
        raise ValueError("`now` must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class _Options:
    kind: Kind
    namespace: str
    author: str
    now: datetime | None
    uid: str | None


def _next_stamp(
    previous: Stamp | None, options: _Options, *, digest: str, size: int, name: str, file_type: str
) -> Stamp:
    """The stamp content should carry now; ``previous`` itself when nothing would change."""
    if options.uid and not _UID.fullmatch(options.uid):
        raise ValueError(f"uid {options.uid!r} is not a UUID")
    # A new uid comes from onex's id generator (no system call per stamp); one read from a stamp was checked there.
    uid = options.uid or (previous.uid if previous else str(new_id()))
    same_kind = previous is not None and previous.kind == options.kind
    if options.kind == "lightweight":
        if previous is not None and same_kind and previous.hash == digest and previous.uid == uid:
            return previous
        pairs = previous.fields if previous is not None and same_kind else {}
        return Stamp(uid=uid, hash=digest, ts=_now_iso(options.now), kind="lightweight", fields=dict(pairs))
    wanted: dict[str, Any] = {
        "metadata_version": METADATA_VERSION,
        "protocol_version": PROTOCOL_VERSION,
        "name": name,
        "namespace": options.namespace,
        "uuid": uid,
        "author": options.author,
        "hash": digest,
        "file_type": file_type,
        "size": size,
    }
    if previous is not None and same_kind and all(previous.fields.get(k) == v for k, v in wanted.items()):
        return previous
    ts = _now_iso(options.now)
    created = ts
    extra: dict[str, Any] = {}
    if previous is not None and previous.kind == "lightweight":
        created = previous.ts
    elif previous is not None:
        created = _as_text(previous.fields.get("created_at") or previous.ts)
        extra = {k: v for k, v in previous.fields.items() if k not in _RICH_KEYS}  # keys someone added: keep them
    fields = {**extra, **wanted, "created_at": created, "last_modified_at": ts}
    return Stamp(uid=uid, hash=digest, ts=ts, kind=options.kind, fields=fields)


def _stamp_unit(stamp: Stamp, layout: _Layout, path: str) -> tuple[bytes, bytes]:
    """The bytes that go right after the prefix, or (``layout.glue``) after all the kept content."""
    assert layout.syntax is not None
    try:
        text = _render(stamp, layout.syntax, layout.newline)
    except ValueError as exc:
        raise StampError(path, f"cannot stamp: {exc}") from None
    # The stamp must fit where _match_stamp looks for it, or the next run would not find it.
    if len(text) + 2 > MAX_STAMP:
        raise StampError(path, f"the stamp would be longer than {MAX_STAMP} bytes (namespace or author too long?)")
    if layout.glue:
        return b"", layout.newline + text
    return text + layout.newline + (layout.newline if layout.syntax.blank_after else b""), b""


# --- hashing --------------------------------------------------------------------------------------------------


def _hasher(size: int) -> blake3:
    return blake3(max_threads=blake3.AUTO) if size >= THREADS_FROM else blake3()


def hash_bytes(data: bytes) -> str:
    """BLAKE3 hex digest of ``data`` as given (nothing stripped)."""
    hasher = _hasher(len(data))
    hasher.update(data)
    return hasher.hexdigest()


def _read_head(f: io.FileIO) -> bytes:
    """Up to ``HEAD_SIZE`` bytes: a raw read may return fewer than asked before the end of the file."""
    parts: list[bytes] = []
    wanted = HEAD_SIZE
    while wanted:
        chunk = f.read(wanted)
        if not chunk:
            break
        parts.append(chunk)
        wanted -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _stream(f: io.FileIO, sink: Callable[[memoryview], object]) -> int:
    """Feed the rest of ``f`` to ``sink`` in chunks from one reused buffer; return the byte count."""
    buffer = memoryview(bytearray(CHUNK_SIZE))
    total = 0
    while n := f.readinto(buffer):
        sink(buffer[:n])
        total += n
    return total


@dataclass(slots=True)
class _Scan:
    head: bytes  # the first HEAD_SIZE bytes, which decided the layout
    layout: _Layout
    digest: str
    size: int  # of the stripped content
    data: bytes | None  # the whole content, when the file was small enough to read at once
    seconds: float  # reading and hashing it


def _scan(f: io.FileIO, name: str, file_size: int) -> _Scan:
    """Read and hash a file once: whole if it is at most ``IN_MEMORY_LIMIT`` bytes, else streamed."""
    started = time.perf_counter()
    if file_size <= IN_MEMORY_LIMIT:
        data = f.readall()  # one allocation of the exact size; a file that grew meanwhile is caught later
        head = data[:HEAD_SIZE] if len(data) > HEAD_SIZE else data
        layout = _analyse(name, head, at_eof=len(head) < HEAD_SIZE)
        size = len(data) - (layout.stamp_end - layout.keep_end)
        digest = _digest(data, layout)
        return _Scan(head, layout, digest, size, data, time.perf_counter() - started)
    head = _read_head(f)
    layout = _analyse(name, head, at_eof=len(head) < HEAD_SIZE)
    # Single-threaded on purpose: fed CHUNK_SIZE at a time, BLAKE3's threads cost more than they save, and
    # copying from the page cache, not hashing, is what limits a streamed file (see bench/stamps.py).
    hasher = blake3()
    hasher.update(memoryview(head)[: layout.keep_end])
    hasher.update(memoryview(head)[layout.stamp_end :])
    total = len(head) + _stream(f, hasher.update)
    digest = hasher.hexdigest()
    size = total - (layout.stamp_end - layout.keep_end)
    return _Scan(head, layout, digest, size, None, time.perf_counter() - started)


@contextlib.contextmanager
def _open_regular(path: str, shown: str) -> Iterator[tuple[io.FileIO, os.stat_result]]:
    """Open ``path`` for reading, refusing anything but a regular file; errors name ``shown``.

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, stalling the whole run.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        raw = io.FileIO(fd, "rb", closefd=True)
    except BaseException:  # FileIO refuses a directory without closing the descriptor it was handed
        os.close(fd)
        raise
    with raw as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise StampError(shown, "is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise StampError(shown, "not a regular file")
        yield f, st


def hash_file(path: str | os.PathLike[str]) -> str:
    """BLAKE3 of a file's content without its stamp, streamed; ``StampError`` naming the path on failure."""
    shown = os.fspath(path)
    try:
        with _open_regular(shown, shown) as (f, st):
            return _scan(f, os.path.basename(os.path.realpath(shown)), st.st_size).digest
    except OSError as exc:
        raise StampError(shown, describe_os_error(exc)) from exc


# --- in memory ------------------------------------------------------------------------------------------------


def _layout_of(content: bytes, file_name: str) -> _Layout:
    return _analyse(os.path.basename(file_name), content[:HEAD_SIZE], at_eof=len(content) < HEAD_SIZE)


def _digest(content: bytes, layout: _Layout) -> str:
    """BLAKE3 of ``content`` stripped as ``layout`` says, without copying it."""
    hasher = _hasher(len(content))
    if layout.keep_end == layout.stamp_end:
        hasher.update(content)  # one call: BLAKE3 is measurably faster given everything at once
    else:
        view = memoryview(content)
        hasher.update(view[: layout.keep_end])
        hasher.update(view[layout.stamp_end :])
    return hasher.hexdigest()


def find_stamp(content: bytes, *, file_name: str) -> Stamp | None:
    """The in-place stamp of ``content``, or ``None`` (always ``None`` for sidecar types)."""
    return _layout_of(content, file_name).stamp


def strip_stamp(content: bytes, *, file_name: str) -> bytes:
    """``content`` without its in-place stamp: exactly the bytes it had before it was stamped."""
    layout = _layout_of(content, file_name)
    if layout.stamp is None:
        return content
    return content[: layout.keep_end] + content[layout.stamp_end :]


def stamp_bytes(
    content: bytes,
    *,
    file_name: str,
    rich: bool = False,
    namespace: str = DEFAULT_NAMESPACE,
    author: str = DEFAULT_AUTHOR,
    now: datetime | None = None,
    uid: str | None = None,
    sidecar: bytes | None = None,
) -> tuple[bytes, Stamp]:
    """Stamp ``content`` in memory; return the new content and its stamp.

    Content already stamped this way with its current hash comes back unchanged (the same object) with its
    existing stamp. For sidecar types the content is returned as is and the stamp has ``kind="sidecar"``: write
    ``render_sidecar(stamp)`` next to the file; pass the existing sidecar's bytes as ``sidecar`` to keep its uid
    (and get it back unchanged if the hash still matches). ``uid`` forces the stamp's uid. Raises
    ``StampError`` (naming ``file_name``) for content that cannot be stamped in place, ``ValueError`` for a bad
    ``uid`` or a naive ``now``.
    """
    name = os.path.basename(file_name)
    layout = _layout_of(content, file_name)
    view = memoryview(content)
    digest = _digest(content, layout)
    size = len(content) - (layout.stamp_end - layout.keep_end)
    if layout.syntax is None:
        previous = parse_sidecar(sidecar, file_name + SIDECAR_SUFFIX) if sidecar is not None else None
        options = _Options("sidecar", namespace, author, now, uid)
        return content, _next_stamp(previous, options, digest=digest, size=size, name=name, file_type=layout.file_type)
    if layout.problem is not None:
        raise StampError(file_name, layout.problem)
    options = _Options("rich" if rich else "lightweight", namespace, author, now, uid)
    stamp = _next_stamp(layout.stamp, options, digest=digest, size=size, name=name, file_type=layout.file_type)
    if stamp is layout.stamp:
        return content, stamp
    before, after = _stamp_unit(stamp, layout, file_name)
    if layout.glue:
        return b"".join((view[: layout.keep_end], after)), stamp
    return b"".join((view[: layout.insert_at], before, view[layout.stamp_end :])), stamp


def verify_bytes(content: bytes, *, file_name: str, sidecar: bytes | None = None) -> VerifyResult:
    """Check ``content`` against its in-place stamp, or against ``sidecar`` (bytes) for sidecar types."""
    layout = _layout_of(content, file_name)
    digest = _digest(content, layout)
    if layout.syntax is None:
        if sidecar is None:
            return VerifyResult(file_name, "unstamped", None, digest)
        try:
            stamp: Stamp | None = parse_sidecar(sidecar, file_name + SIDECAR_SUFFIX)
        except StampError as exc:
            return VerifyResult(file_name, "error", None, digest, str(exc))
    else:
        stamp = layout.stamp
        if stamp is None and (misplaced := _misplaced_stamp(content, layout)) is not None:
            # The lines the stamp follows (BOM, shebang, coding line, front matter ...) changed, so it is no longer
            # where the file's first lines put it: the file was stamped and then modified, not never stamped.
            return VerifyResult(file_name, "modified", misplaced.hash, digest)
    return _verdict(file_name, stamp, digest)


def _misplaced_stamp(content: bytes, layout: _Layout) -> Stamp | None:
    """A stamp within the first ``MAX_PREFIX`` bytes other than where ``layout`` looks for one."""
    syntax = layout.syntax
    assert syntax is not None
    head = content[:HEAD_SIZE]
    at_eof = len(content) < HEAD_SIZE
    for marker in (syntax.open + b"ONEX:", syntax.open + _OPEN_MARK):
        pos = head.find(marker, 0, MAX_PREFIX + len(marker))
        while pos >= 0:
            if pos != layout.insert_at and (found := _match_stamp(head, pos, at_eof, syntax)) is not None:
                return found[0]
            pos = head.find(marker, pos + 1, MAX_PREFIX + len(marker))
    return None


def _verdict(path: str, stamp: Stamp | None, digest: str) -> VerifyResult:
    if stamp is None:
        return VerifyResult(path, "unstamped", None, digest)
    return VerifyResult(path, "valid" if stamp.hash == digest else "modified", stamp.hash, digest)


# --- on disk --------------------------------------------------------------------------------------------------

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): a file replaced, rewritten or touched changes one of them.
_Snapshot = tuple[int, int, int, int, int]


def _snapshot(st: os.stat_result) -> _Snapshot:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; some file systems refuse to fsync a directory, which is not an error.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Busy(StampError):
    """The file is open in another process, so it is not replaced (``stamp_file``'s status ``busy``)."""


# F_SETLEASE failures that mean "never here" rather than "not now": leases switched off or not supported by the file
# system (EINVAL, ENOLCK, EOPNOTSUPP), or this file not ours to lease (EACCES: neither its owner nor CAP_LEASE).
_NO_LEASE: Final = frozenset({errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES, errno.EPERM})
# ...and those that mean another open file description exists (ETXTBSY: it is being executed).
_OPEN_ELSEWHERE: Final = frozenset({errno.EAGAIN, errno.EBUSY, errno.ETXTBSY})


def _take_lease(fd: int, shown: str) -> bool:
    """Take a write lease on ``fd``: True when held, False where leases are unavailable; ``_Busy`` when the file is
    open anywhere else (a write lease is granted only to the one open file description of a file)."""
    if sys.platform != "linux":
        return False
    try:
        # Whoever opens the file while we hold the lease makes the kernel signal us, with SIGIO unless told
        # otherwise, which kills a Python process (it installs no handler). SIGURG is ignored unless handled; the
        # break is seen by asking F_GETLEASE before the rename instead.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        if exc.errno in _OPEN_ELSEWHERE:
            raise _Busy(shown, BUSY) from None
        if exc.errno in _NO_LEASE:
            return False
        raise
    return True


@contextlib.contextmanager
def _write_lease(fd: int | None, shown: str) -> Iterator[Callable[[], bool]]:
    """Hold a write lease on ``fd`` (the original, open for reading) for the duration; yields ``alone()``, True
    while nobody else has opened the file since. Without a lease (``fd`` None, or leases unavailable here) ``alone``
    is always True and the snapshot comparison alone guards the replace."""
    if fd is None or not _take_lease(fd, shown):
        yield lambda: True
        return
    try:
        # Another open of the file breaks the lease: F_GETLEASE then reports the type it is being broken to.
        yield lambda: bool(fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK)
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


def _replace(
    target: str,
    write: Callable[[int], None],
    *,
    mode: int,
    owner: tuple[int, int] | None,
    guard: Callable[[], None],
    shown: str,
    lease: int | None = None,
    hook: Callable[[], None] | None = None,
) -> None:
    """Atomically replace (or create) ``target`` with what ``write`` writes to a file descriptor.

    Once the data is durable: ``hook`` (a test seam), then under a write lease on ``lease`` (the original's
    descriptor, for an in-place stamp) ``guard``, which raises to abandon the write, a check that nobody opened the
    original meanwhile, and the rename. ``_Busy`` when the original is open elsewhere.
    """
    directory, base = os.path.split(target)
    directory = directory or "."
    fd, temp = tempfile.mkstemp(prefix=temp_prefix(base), dir=directory)
    try:
        try:
            write(fd)
            os.fchmod(fd, mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # only root may give a file away; keep ours then
                    os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        if hook is not None:
            hook()
        with _write_lease(lease, shown) as alone:
            guard()
            if not alone():  # opened since the lease was taken: that opener waits for us and must find its file
                raise _Busy(shown, BUSY)
            os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(directory)


def _guard(path: str, shown: str, before: _Snapshot) -> Callable[[], None]:
    """The last check before a rename: ``path`` must be the very file read, unchanged (``_Snapshot``)."""

    def check() -> None:
        try:
            now = _snapshot(os.stat(path))
        except FileNotFoundError:
            raise StampError(shown, "changed while stamping (deleted); left untouched") from None
        if now != before:
            raise StampError(shown, "changed while stamping; left untouched")

    return check


def _read_sidecar(path: Path) -> tuple[Stamp | None, int | None]:
    """The stamp in a sidecar and its mode, or ``(None, None)`` when there is none."""
    try:
        with _open_regular(os.fspath(path), os.fspath(path)) as (f, st):
            data = f.readall()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise StampError(path, describe_os_error(exc)) from exc
    return parse_sidecar(data, path), stat.S_IMODE(st.st_mode)


def stamp_file(
    path: str | os.PathLike[str],
    *,
    rich: bool = False,
    namespace: str = DEFAULT_NAMESPACE,
    author: str = DEFAULT_AUTHOR,
    dry_run: bool = False,
    roots: Sequence[str] | None = None,
    _before_replace: Callable[[Path], None] | None = None,
) -> StampResult:
    """Stamp one file in place (or its sidecar) atomically; never raises for a problem with the file.

    ``status`` is ``stamped`` (with ``dry_run``: would be; nothing is written), ``unchanged`` (already stamped
    so; nothing is written), ``skipped`` (an onex sidecar or temporary file), ``busy`` (open in another process, so
    not replaced; nothing is written, try again later) or ``failed`` (``error`` names the path and the reason).
    ``roots`` (real paths): the file, the one actually opened, must be under one of them, else ``failed`` with
    "refused: ..." and nothing is read; callers check first, this closes the gap of a link changed in between.
    ``_before_replace`` is a test seam, called with the path just before the lease and the rename.
    """
    shown = os.fspath(path)
    try:
        return _stamp_file(shown, rich, namespace, author, dry_run, roots, _before_replace)
    except _Busy as exc:
        return StampResult(shown, "busy", None, detect_file_type(shown, b""), 0, str(exc))
    except StampError as exc:
        return StampResult(shown, "failed", None, detect_file_type(shown, b""), 0, str(exc))
    except OSError as exc:
        if exc.errno == errno.EWOULDBLOCK:  # opened (O_NONBLOCK) while another stamper holds its lease: busy
            return StampResult(shown, "busy", None, detect_file_type(shown, b""), 0, f"{shown}: {BUSY}")
        return StampResult(shown, "failed", None, detect_file_type(shown, b""), 0, f"{shown}: {describe_os_error(exc)}")


def _opened_path(fd: int, fallback: str) -> str:
    """Where the file open as ``fd`` really is (Linux); ``fallback`` where that cannot be asked."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback


def _stamp_file(
    shown: str,
    rich: bool,
    namespace: str,
    author: str,
    dry_run: bool,
    roots: Sequence[str] | None,
    before_replace: Callable[[Path], None] | None,
) -> StampResult:
    real = os.path.realpath(shown)  # stamp a symlink's target, keeping the link
    name = os.path.basename(real)
    if is_sidecar(name) or is_temp(name):
        return StampResult(shown, "skipped", None, "data", 0, f"{shown}: an onex sidecar or temporary file")
    if roots is not None and not within(real, roots):
        raise StampError(shown, f"refused: {real} is outside the stamp roots ({os.pathsep.join(roots)})")
    with _open_regular(real, shown) as (f, st):
        if roots is not None and not within(opened := _opened_path(f.fileno(), real), roots):
            raise StampError(shown, f"refused: {opened} is outside the stamp roots ({os.pathsep.join(roots)})")
        before = _snapshot(st)
        scan = _scan(f, name, st.st_size)
        layout = scan.layout
        guard = _guard(real, shown, before)
        hook = (lambda: before_replace(Path(real))) if before_replace is not None else None
        if layout.syntax is None:
            side = sidecar_path(real)
            previous, side_mode = _read_sidecar(side)
            options = _Options("sidecar", namespace, author, None, None)
            stamp = _next_stamp(
                previous, options, digest=scan.digest, size=scan.size, name=name, file_type=layout.file_type
            )
            if stamp is previous:
                return StampResult(shown, "unchanged", stamp, layout.file_type, scan.size, hash_seconds=scan.seconds)
            if not dry_run:
                data = render_sidecar(stamp)
                mode = side_mode if side_mode is not None else stat.S_IMODE(st.st_mode) & 0o666
                # No lease: the original is only read, and the sidecar is onex's own file. The snapshot comparison
                # still refuses a sidecar for content that changed while it was hashed.
                _replace(
                    os.fspath(side),
                    lambda fd: _write_all(fd, (data,)),
                    mode=mode,
                    owner=None,
                    guard=guard,
                    shown=shown,
                    hook=hook,
                )
            return StampResult(shown, "stamped", stamp, layout.file_type, scan.size, hash_seconds=scan.seconds)
        if layout.problem is not None:
            return StampResult(
                shown,
                "failed",
                None,
                layout.file_type,
                scan.size,
                f"{shown}: {layout.problem}",
                hash_seconds=scan.seconds,
            )
        options = _Options("rich" if rich else "lightweight", namespace, author, None, None)
        stamp = _next_stamp(
            layout.stamp, options, digest=scan.digest, size=scan.size, name=name, file_type=layout.file_type
        )
        if stamp is layout.stamp:
            return StampResult(shown, "unchanged", stamp, layout.file_type, scan.size, hash_seconds=scan.seconds)
        if dry_run:
            return StampResult(shown, "stamped", stamp, layout.file_type, scan.size, hash_seconds=scan.seconds)
        before_kept, after_kept = _stamp_unit(stamp, layout, shown)
        # The original's bytes: all of them if they were read at once, else the head, then the rest again.
        source = memoryview(scan.data if scan.data is not None else scan.head)

        def write(fd: int) -> None:
            if layout.glue:  # only ever a file that ends with its prefix, so it is all in ``source``
                _write_all(fd, (source[: layout.keep_end], after_kept))
                return
            _write_all(fd, (source[: layout.insert_at], before_kept, source[layout.stamp_end :]))
            if scan.data is None:
                f.seek(len(scan.head))
                _stream(f, lambda chunk: _write_all(fd, (chunk,)))

        try:
            _replace(
                real,
                write,
                mode=stat.S_IMODE(st.st_mode),
                owner=(st.st_uid, st.st_gid),
                guard=guard,
                shown=shown,
                lease=f.fileno(),
                hook=hook,
            )
        except _Busy as exc:
            return StampResult(shown, "busy", None, layout.file_type, scan.size, str(exc), hash_seconds=scan.seconds)
        return StampResult(shown, "stamped", stamp, layout.file_type, scan.size, hash_seconds=scan.seconds)


def verify_file(path: str | os.PathLike[str]) -> VerifyResult:
    """Recompute a file's hash and compare it with its stamp (in place or in its sidecar); never raises for a
    problem with the file (``status="error"``)."""
    shown = os.fspath(path)
    try:
        real = os.path.realpath(shown)
        with _open_regular(real, shown) as (f, st):
            scan = _scan(f, os.path.basename(real), st.st_size)
        stamp = scan.layout.stamp if scan.layout.syntax is not None else _read_sidecar(sidecar_path(real))[0]
    except StampError as exc:
        return VerifyResult(shown, "error", None, None, str(exc))
    except OSError as exc:
        return VerifyResult(shown, "error", None, None, f"{shown}: {describe_os_error(exc)}")
    return _verdict(shown, stamp, scan.digest)
