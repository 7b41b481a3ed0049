"""BLAKE3 metadata stamps: hash, stamp, strip and verify files, in place or in a sidecar.

**The hash** is BLAKE3 of the content's bytes with the stamp removed, and nothing else changed (no newline or
whitespace is normalised), so a stamped file hashes the same as the original and ``verify`` needs nothing but the
file; a stamp the omninode bridge wrote may hold the bridge's hash instead (see **Formats**). Files up to
``IN_MEMORY_LIMIT`` are read whole; larger ones are hashed in ``CHUNK_SIZE`` chunks from one reused buffer, so
memory stays flat for multi-gigabyte files (and they are never mapped: a file truncated under a mapping would kill
the process with SIGBUS). In-memory content from ``THREADS_FROM`` bytes up is hashed with BLAKE3's threads;
streamed chunks are not, as that measured slower.

**Where and how a stamp is written** in each kind of file (the prefix it follows, the comment syntax, the file's
encoding, plugins that add file types) is ``onex.filetypes``; this module hashes, decides when to restamp, writes
atomically and verifies.

**Formats.** Lightweight: one comment line ``ONEX:uid=<uuid4>,hash=<blake3 hex>,ts=<iso8601 UTC>`` (extra
``,key=value`` pairs of an existing stamp, as the bridge writes them, are recognised and kept; so is the seed's
form without ``ts=``). The bridge's stamps (a ``# ONEX:`` line with ``ts=`` and such pairs: it writes ``author=`` and
``v=``) are also verified under the bridge's rule: BLAKE3 of the text with every stamp of the bridge's removed by
its patterns, each run of three or more newlines collapsed to two, and whitespace stripped from both ends. One
that matches either hash is ``valid`` (and a lightweight restamp leaves it ``unchanged``); one that matches neither
is ``modified``. Applied only to such a stamp, when it does not hold onex's hash, to UTF-8 content up to
``BRIDGE_LIMIT`` bytes. A stamp the bridge wrote without pairs cannot be told from onex's and is held to onex's hash
(under the bridge's rule, a file that gained or lost blank lines at either end would still match). Rich: YAML with
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

**Sidecars.** Files with no comment syntax (JSON, CSV, images, archives, unknown extensions) and binary content
get ``<file>.onex.yaml`` holding the rich fields; their bytes are never modified and their hash is of the whole
content. Binary means: magic bytes of a binary format, or a NUL byte, in the first ``files.SNIFF_SIZE`` bytes
(of the content with the stamp removed), whatever the extension says; so a PNG named ``x.py`` gets a sidecar.

Text with a comment syntax that is neither UTF-8 nor in an encoding it declares (a latin-1 ``.txt``), and UTF-16/32
text larger than ``filetypes.WHOLE_LIMIT`` (unless it holds a stamp in place already), get a sidecar too; text in a
declared encoding, or UTF-16/32 with a BOM, is stamped in place in that encoding (see ``onex.filetypes``). A file
with no stamp in place but an onex sidecar keeps its stamp there (``_kept``), so a file that could take one in place
only since (re-encoded as UTF-8, say) is verified against its sidecar and restamped into it, rather than reading as
unstamped next to a stale one.

**Refusals** (``stamp_file`` returns ``failed``, ``stamp_bytes`` raises ``StampError``): a prefix longer than
``MAX_PREFIX`` (front matter that does not close within it, say), a stamp longer than ``MAX_STAMP``, a file type
plugin that fails or whose stamp does not read back exactly, a stamp that is no longer where the file's first lines
put it (``filetypes.MISPLACED``: a line added above it; stamping would add a second one, and ``verify`` calls the file
modified), and UTF-16/32 text stamped in place that has since grown past ``WHOLE_LIMIT`` or stopped decoding exactly
(``filetypes.not_whole``: its stamp is verified where it is, and is ``unchanged`` while it matches). Nothing is
refused for its encoding alone. The rest of a large file is not validated; the stamp is ASCII, so inserting it
cannot corrupt any ASCII-compatible encoding.

**Restamping.** Content whose hash matches its stamp (a bridge's stamp: either hash), stamped the same kind with
the same options, is left alone byte for byte (status ``unchanged``: same uid, same timestamps). Otherwise the old
stamp is replaced: the uid and ``created_at`` are kept, the hash and ``ts``/``last_modified_at`` are new. Changing
``rich``, ``namespace`` or ``author`` counts as a change. Empty files are stamped like any other (an empty ``.py``
holding only a stamp is valid Python; its hash is BLAKE3 of no bytes).

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from blake3 import blake3

from onex._frozen import maker, quick_init
from onex.clock import utc_text
from onex.envelope import random_id, uuid_text
from onex.exceptions import StampError
from onex.files import (
    SIDECAR_SUFFIX,
    describe_os_error,
    detect_file_type,
    is_sidecar,
    is_temp,
    temp_prefix,
    within,
)
from onex.filetypes import (
    HEAD_SIZE,
    MAX_PREFIX,
    MAX_STAMP,
    MISPLACED,
    UID,
    WHOLE_LIMIT,
    Kind,
    Layout,
    Stamp,
    analyse,
    as_text,
    load_yaml,
    misplaced_stamp,
    not_whole,
    resolve_whole,
    stamp_from_fields,
    stamp_unit,
    stamp_whole,
    yaml_lines,
)

if sys.platform != "win32":
    import fcntl

__all__ = [
    "BRIDGE_LIMIT",
    "BUSY",
    "CHUNK_SIZE",
    "DEFAULT_AUTHOR",
    "DEFAULT_NAMESPACE",
    "METADATA_VERSION",
    "PROTOCOL_VERSION",
    "Stamp",
    "StampResult",
    "StampedContent",
    "VerifyResult",
    "find_stamp",
    "hash_bytes",
    "hash_file",
    "parse_sidecar",
    "render_sidecar",
    "sidecar_path",
    "stamp_bytes",
    "stamp_content",
    "stamp_file",
    "stamp_sidecar",
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
# Files up to this size are read whole (one read, one hash call, one write); larger ones are streamed, twice
# when they are stamped, through one CHUNK_SIZE buffer. Memory per file is bounded by this, not by file size.
IN_MEMORY_LIMIT: int = 4 * 1024 * 1024

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
__all__ += ["HEAD_SIZE", "MAX_PREFIX", "MAX_STAMP"]  # where a stamp is looked for: onex.filetypes


_Status = Literal["stamped", "unchanged", "skipped", "busy", "failed"]


@dataclass(frozen=True)
class StampResult:
    """What ``stamp_file`` did to one file. ``size`` counts the content without its stamp (0 when unknown);
    ``error`` names the path and says what went wrong when ``status == "failed"``, why it was skipped, or (``busy``)
    that another process has it open, so it was left as it was: try again later."""

    path: str
    status: _Status
    stamp: Stamp | None
    file_type: str
    size: int
    error: str | None = None
    hash_seconds: float = 0.0  # reading and BLAKE3-hashing the content (0 when it was not read)
    mode: int | None = None  # the file's permission bits when it was opened (None when it was not)


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify_file`` found: ``expected`` is the stamp's hash, ``actual`` the content's (onex's hash: so a
    bridge's stamp ``valid`` under the bridge's rule has an ``expected`` that differs from it)."""

    path: str
    status: Literal["valid", "modified", "unstamped", "error", "skipped"]  # skipped: left out by the walk
    expected: str | None
    actual: str | None
    error: str | None = None


def render_sidecar(stamp: Stamp) -> bytes:
    """The content of a sidecar file for ``stamp``."""
    header = b"# onex metadata stamp of the file this one is named after; `onex verify` checks it\n"
    return header + b"".join(line + b"\n" for line in yaml_lines(stamp.fields))


def parse_sidecar(data: bytes, path: str | os.PathLike[str] = "<sidecar>") -> Stamp:
    """The stamp in a sidecar's content; ``StampError`` naming ``path`` if it is not one."""
    stamp = stamp_from_fields(load_yaml(data), "sidecar")
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
    return utc_text(moment)


@quick_init
@dataclass(frozen=True, slots=True)
class _Options:
    kind: Kind
    namespace: str
    author: str
    now: datetime | None
    uid: str | None


# Built at about half the cost of the classes' calls (``onex._frozen.maker``).
_options = maker(_Options)
_stamp = maker(Stamp)


def _next_stamp(
    previous: Stamp | None, options: _Options, *, digest: str, size: int, name: str, file_type: str
) -> Stamp:
    """The stamp content should carry now; ``previous`` itself when nothing would change."""
    if options.uid and not UID.fullmatch(options.uid):
        raise ValueError(f"uid {options.uid!r} is not a UUID")
    # A new uid comes from onex's id generator (no system call per stamp); one read from a stamp was checked there.
    uid = options.uid or (previous.uid if previous else uuid_text(random_id()))
    same_kind = previous is not None and previous.kind == options.kind
    if options.kind == "lightweight":
        if previous is not None and same_kind and previous.hash == digest and previous.uid == uid:
            return previous
        pairs = {k: v for k, v in previous.fields.items() if k != "ts"} if previous is not None and same_kind else {}
        return _stamp(uid=uid, hash=digest, ts=_now_iso(options.now), kind="lightweight", fields=dict(pairs))
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
        created = as_text(previous.fields.get("created_at") or previous.ts)
        extra = {k: v for k, v in previous.fields.items() if k not in _RICH_KEYS}  # keys someone added: keep them
    fields = {**extra, **wanted, "created_at": created, "last_modified_at": ts}
    return _stamp(uid=uid, hash=digest, ts=ts, kind=options.kind, fields=fields)


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
    layout: Layout
    digest: str
    size: int  # of the stripped content
    data: bytes | None  # the whole content, when the file was small enough to read at once
    seconds: float  # reading and hashing it
    stripped: bytes | None = None  # the content without its stamp, for a layout stamped whole (``layout.whole``)


def _scan_bytes(data: bytes, name: str, started: float = 0.0) -> _Scan:
    """Analyse and hash content held in memory; ``started`` (a ``perf_counter`` reading) times it, 0 does not."""
    head = data[:HEAD_SIZE] if len(data) > HEAD_SIZE else data
    layout = analyse(name, head, len(head) < HEAD_SIZE)
    if layout.whole is not None:
        layout, stripped = resolve_whole(layout, data, name)
        if stripped is not None:
            seconds = time.perf_counter() - started if started else 0.0
            return _Scan(head, layout, hash_bytes(stripped), len(stripped), data, seconds, stripped)
    size = len(data) - (layout.stamp_end - layout.keep_end)
    digest = _digest(data, layout)
    return _Scan(head, layout, digest, size, data, time.perf_counter() - started if started else 0.0)


def _scan(f: io.FileIO, name: str, file_size: int) -> _Scan:
    """Read and hash a file once: whole if it is at most ``IN_MEMORY_LIMIT`` bytes, else streamed."""
    started = time.perf_counter()
    if file_size <= IN_MEMORY_LIMIT:
        # One allocation of the exact size; a file that grew meanwhile is caught later.
        return _scan_bytes(f.readall(), name, started)
    head = _read_head(f)
    layout = analyse(name, head, at_eof=len(head) < HEAD_SIZE)
    if layout.whole is not None:
        if file_size <= WHOLE_LIMIT:  # a handler that needs it whole: read the rest
            return _scan_bytes(head + f.readall(), name, started)
        layout = not_whole(layout, head, at_eof=False, why=f"larger than {WHOLE_LIMIT} bytes")
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


# --- the bridge's stamps -------------------------------------------------------------------------------------

# The omninode bridge's stamping engine hashes text, not bytes: it removes every stamp of its own that these find
# anywhere in the text (its ``lightweight_pattern`` and ``rich_pattern``), collapses each run of three or more
# newlines to two and strips whitespace from both ends (its ``_remove_existing_stamps``), then takes BLAKE3 of the
# UTF-8. Copied exactly: a stamp it wrote verifies only under its own rule.
_BRIDGE_LIGHTWEIGHT: Final = re.compile(r"# ONEX:uid=([a-zA-Z0-9_-]+),hash=([a-zA-Z0-9]+),ts=([0-9T:\-\+\.]+).*")
_BRIDGE_RICH: Final = re.compile(r"<!--\s*ONEX_METADATA_START\s*-->(.*?)<!--\s*ONEX_METADATA_END\s*-->", re.DOTALL)
_BRIDGE_BLANKS: Final = re.compile(r"\n{3,}")
# The bridge's rule is applied to content up to this size (the bridge holds the whole text in memory; onex does
# not, past it). Fixed, so a file is judged the same on disk and in memory whatever ``IN_MEMORY_LIMIT`` is.
BRIDGE_LIMIT: Final = WHOLE_LIMIT


def _bridge_digest(content: bytes) -> str | None:
    """BLAKE3 of ``content`` by the bridge's rule; ``None`` for content that is not UTF-8 (the bridge hashes text)
    or larger than ``BRIDGE_LIMIT``."""
    if len(content) > BRIDGE_LIMIT:
        return None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = _BRIDGE_RICH.sub("", _BRIDGE_LIGHTWEIGHT.sub("", text))
    return hash_bytes(_BRIDGE_BLANKS.sub("\n\n", text).strip().encode("utf-8"))


def _bridge_valid(stamp: Stamp | None, layout: Layout, digest: str, read: Callable[[], bytes | None]) -> bool:
    """Whether ``stamp``, which does not hold onex's hash (``digest``), is the bridge's and holds the bridge's hash
    of the content ``read`` gives (called only then; ``None``: too large to read whole).

    The bridge's form is a lightweight ``# ONEX:`` line with ``ts=`` and extra ``key=value`` pairs (it writes
    ``author=`` and ``v=``; onex writes none of its own, only keeps them). Without the pairs a stamp the bridge wrote
    reads exactly as onex's, and onex's are held to onex's hash: under the bridge's rule a file that only gained or
    lost blank lines at its ends would still match. So onex's own stamps cost nothing more, valid or not."""
    if stamp is None or stamp.hash == digest or not stamp.fields or not stamp.ts or stamp.kind != "lightweight":
        return False
    if layout.syntax is None or layout.syntax.open != b"# ":  # the bridge writes and strips only ``# ONEX:``
        return False
    content = read()
    return content is not None and _bridge_digest(content) == stamp.hash


def _bridge_kept(layout: Layout, options: _Options, digest: str, read: Callable[[], bytes | None]) -> Stamp | None:
    """The bridge's stamp ``layout`` found, when a restamp keeps it as it is (``unchanged``): it verifies under the
    bridge's rule and a lightweight stamp with its uid is asked for. Rewriting it with onex's hash would make the
    bridge call the file modified."""
    stamp = layout.stamp
    if stamp is None or options.kind != "lightweight" or options.uid not in (None, stamp.uid):
        return None
    return stamp if _bridge_valid(stamp, layout, digest, read) else None


def _whole(scan: _Scan, f: io.FileIO, size: int) -> Callable[[], bytes | None]:
    """What gives the bridge's rule the content of the open file ``f`` (``size`` bytes): what ``scan`` read, else
    the whole file read again if it is no larger than ``BRIDGE_LIMIT`` (only when ``IN_MEMORY_LIMIT`` is smaller)."""

    def read() -> bytes | None:
        if scan.data is not None:
            return scan.data
        if size > BRIDGE_LIMIT:
            return None
        f.seek(0)
        return f.readall()

    return read


# --- in memory ------------------------------------------------------------------------------------------------


def _layout_of(content: bytes, file_name: str) -> Layout:
    return _scan_bytes(content, os.path.basename(file_name)).layout


def _digest(content: bytes, layout: Layout) -> str:
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
    scan = _scan_bytes(content, os.path.basename(file_name))
    layout = scan.layout
    if layout.stamp is None:
        return content
    if scan.stripped is not None:
        return scan.stripped
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
    ``uid`` or a naive ``now``. ``stamp_content`` does the same and also says the content's file type.
    """
    stamped = stamp_content(
        content, file_name=file_name, rich=rich, namespace=namespace, author=author, now=now, uid=uid, sidecar=sidecar
    )
    return stamped.content, stamped.stamp


@quick_init
@dataclass(frozen=True, slots=True)
class StampedContent:
    """What ``stamp_content`` made of some content: the new content, its stamp, its file type as onex names it
    (what a stamp of the rich kind records, and ``stamp_file`` reports: the type the content was stamped as), and
    its size without a stamp (``StampResult.size``, what a stamp of the rich kind records)."""

    content: bytes
    stamp: Stamp
    file_type: str
    size: int


_stamped = maker(StampedContent)  # built at about half the cost of the class's call (``onex._frozen.maker``)


def stamp_content(
    content: bytes,
    *,
    file_name: str,
    rich: bool = False,
    namespace: str = DEFAULT_NAMESPACE,
    author: str = DEFAULT_AUTHOR,
    now: datetime | None = None,
    uid: str | None = None,
    sidecar: bytes | None = None,
) -> StampedContent:
    """``stamp_bytes``, with the file type its analysis found (so a caller need not classify the content again)."""
    name = os.path.basename(file_name)
    scan = _scan_bytes(content, name)
    layout, digest, size = scan.layout, scan.digest, scan.size
    file_type = layout.file_type
    if layout.syntax is None or (layout.stamp is None and _kept(sidecar, file_name) is not None):
        return _sidecar_stamped(content, scan, file_name, namespace, author, now, uid, sidecar)
    options = _options("rich" if rich else "lightweight", namespace, author, now, uid)
    if layout.problem is not None:
        # A stamp kept where it is (``filetypes.not_whole``) that still matches needs no restamp; anything else does.
        if (kept := _still_matching(layout, options, digest, size, name)) is None:
            raise StampError(file_name, layout.problem)
        return _stamped(content, kept, file_type, size)
    # A stamp elsewhere in the head: a second one would go in (verify_bytes calls it modified).
    if misplaced_stamp(content, layout) is not None:
        raise StampError(file_name, MISPLACED)
    stamp = _next_stamp(layout.stamp, options, digest=digest, size=size, name=name, file_type=file_type)
    if stamp is not layout.stamp and layout.stamp is not None and layout.stamp.fields:
        stamp = _bridge_kept(layout, options, digest, lambda: content) or stamp
    if stamp is layout.stamp:
        return _stamped(content, stamp, file_type, size)
    if scan.stripped is not None:
        return _stamped(stamp_whole(layout, scan.stripped, stamp, file_name), stamp, file_type, size)
    before, after = stamp_unit(stamp, layout, file_name)
    view = memoryview(content)
    if layout.glue:
        return _stamped(b"".join((view[: layout.keep_end], after)), stamp, file_type, size)
    return _stamped(b"".join((view[: layout.insert_at], before, view[layout.stamp_end :])), stamp, file_type, size)


def _still_matching(layout: Layout, options: _Options, digest: str, size: int, name: str) -> Stamp | None:
    """The stamp ``layout`` found, when it needs no restamp with ``options`` (``_next_stamp`` keeps it); else None."""
    stamp = layout.stamp
    if (
        stamp is None
        or _next_stamp(stamp, options, digest=digest, size=size, name=name, file_type=layout.file_type) is not stamp
    ):
        return None
    return stamp


def stamp_sidecar(
    content: bytes,
    *,
    file_name: str,
    namespace: str = DEFAULT_NAMESPACE,
    author: str = DEFAULT_AUTHOR,
    now: datetime | None = None,
    uid: str | None = None,
    sidecar: bytes | None = None,
) -> StampedContent:
    """A sidecar stamp for ``content`` of any type, which comes back as it is: ``stamp_content`` of a sidecar type,
    for bytes a caller must not see changed (sent as bytes, say). Its hash is of the content without a stamp."""
    scan = _scan_bytes(content, os.path.basename(file_name))
    return _sidecar_stamped(content, scan, file_name, namespace, author, now, uid, sidecar)


def _sidecar_stamped(
    content: bytes,
    scan: _Scan,
    file_name: str,
    namespace: str,
    author: str,
    now: datetime | None,
    uid: str | None,
    sidecar: bytes | None,
) -> StampedContent:
    previous = parse_sidecar(sidecar, file_name + SIDECAR_SUFFIX) if sidecar is not None else None
    options = _options("sidecar", namespace, author, now, uid)
    file_type, name = scan.layout.file_type, os.path.basename(file_name)
    stamp = _next_stamp(previous, options, digest=scan.digest, size=scan.size, name=name, file_type=file_type)
    return _stamped(content, stamp, file_type, scan.size)


def _kept(sidecar: bytes | None, file_name: str) -> Stamp | None:
    """The stamp in an onex sidecar of a file with no stamp in place (``None`` if none, or not ours).

    A file whose stamp went into a sidecar (binary then, or text in an encoding it did not declare) keeps it there
    when it could now take one in place: verify checks it against the sidecar (modified, not unstamped) and a
    restamp updates the sidecar rather than leave it stale. A foreign file at the sidecar's path changes nothing.
    """
    if sidecar is None:
        return None
    try:
        return parse_sidecar(sidecar, file_name + SIDECAR_SUFFIX)
    except StampError:
        return None


def verify_bytes(content: bytes, *, file_name: str, sidecar: bytes | None = None) -> VerifyResult:
    """Check ``content`` against its in-place stamp, or against ``sidecar`` (bytes) for sidecar types."""
    scan = _scan_bytes(content, os.path.basename(file_name))
    layout, digest = scan.layout, scan.digest
    if layout.syntax is None:
        if sidecar is None:
            return VerifyResult(file_name, "unstamped", None, digest)
        try:
            stamp: Stamp | None = parse_sidecar(sidecar, file_name + SIDECAR_SUFFIX)
        except StampError as exc:
            return VerifyResult(file_name, "error", None, digest, str(exc))
    else:
        stamp = layout.stamp
        if stamp is None and sidecar is not None:
            stamp = _kept(sidecar, file_name)
        if stamp is None and (misplaced := misplaced_stamp(content, layout)) is not None:
            # The lines the stamp follows (BOM, shebang, coding line, front matter ...) changed, so it is no longer
            # where the file's first lines put it: the file was stamped and then modified, not never stamped.
            return VerifyResult(file_name, "modified", misplaced.hash, digest)
    if stamp is not None and stamp.hash != digest and _bridge_valid(stamp, layout, digest, lambda: content):
        return VerifyResult(file_name, "valid", stamp.hash, digest)
    return _verdict(file_name, stamp, digest)


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
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # only root may give a file away; keep ours then
                    os.fchown(fd, *owner)
            # After the chown, which clears the setuid and setgid bits (even root's): the mode must survive it.
            os.fchmod(fd, mode)
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


def _kept_on_disk(real: str) -> Stamp | None:
    """``_kept`` for a file on disk: the stamp in its onex sidecar, if it has one (one failed open if not)."""
    try:
        return _read_sidecar(sidecar_path(real))[0]
    except StampError:
        return None


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
        file_mode = stat.S_IMODE(st.st_mode)
        scan = _scan(f, name, st.st_size)
        layout = scan.layout

        def done(status: _Status, stamp: Stamp | None, error: str | None = None) -> StampResult:
            return StampResult(
                shown, status, stamp, layout.file_type, scan.size, error, hash_seconds=scan.seconds, mode=file_mode
            )

        guard = _guard(real, shown, before)
        hook = (lambda: before_replace(Path(real))) if before_replace is not None else None
        if layout.syntax is None or (layout.stamp is None and _kept_on_disk(real) is not None):
            side = sidecar_path(real)
            previous, side_mode = _read_sidecar(side)
            options = _Options("sidecar", namespace, author, None, None)
            stamp = _next_stamp(
                previous, options, digest=scan.digest, size=scan.size, name=name, file_type=layout.file_type
            )
            if stamp is previous:
                return done("unchanged", stamp)
            if not dry_run:
                data = render_sidecar(stamp)
                mode = side_mode if side_mode is not None else file_mode & 0o666
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
            return done("stamped", stamp)
        options = _Options("rich" if rich else "lightweight", namespace, author, None, None)
        if layout.problem is not None:
            # A stamp kept where it is (``filetypes.not_whole``) that still matches needs no restamp: unchanged.
            if (kept := _still_matching(layout, options, scan.digest, scan.size, name)) is not None:
                return done("unchanged", kept)
            return done("failed", None, f"{shown}: {layout.problem}")
        if misplaced_stamp(scan.data or scan.head, layout):
            return done("failed", None, f"{shown}: {MISPLACED}")  # not a second stamp above or below the first
        stamp = _next_stamp(
            layout.stamp, options, digest=scan.digest, size=scan.size, name=name, file_type=layout.file_type
        )
        if stamp is not layout.stamp and layout.stamp is not None and layout.stamp.fields:
            stamp = _bridge_kept(layout, options, scan.digest, _whole(scan, f, st.st_size)) or stamp
        if stamp is layout.stamp:
            return done("unchanged", stamp)
        if dry_run:
            return done("stamped", stamp)
        if scan.stripped is not None:  # stamped whole by its handler (UTF-16/32 text, a plugin): all in memory
            assert scan.data is not None
            before_kept, after_kept = stamp_whole(layout, scan.stripped, stamp, shown), b""
            layout = Layout(layout.syntax, layout.file_type, stamp_end=len(scan.data))  # replace every byte
        else:
            before_kept, after_kept = stamp_unit(stamp, layout, shown)
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
                mode=file_mode,
                owner=(st.st_uid, st.st_gid),
                guard=guard,
                shown=shown,
                lease=f.fileno(),
                hook=hook,
            )
        except _Busy as exc:
            return done("busy", None, str(exc))
        return done("stamped", stamp)


def verify_file(path: str | os.PathLike[str]) -> VerifyResult:
    """Recompute a file's hash and compare it with its stamp (in place or in its sidecar); never raises for a
    problem with the file (``status="error"``)."""
    shown = os.fspath(path)
    try:
        real = os.path.realpath(shown)
        with _open_regular(real, shown) as (f, st):
            scan = _scan(f, os.path.basename(real), st.st_size)
            layout = scan.layout
            stamp = layout.stamp if layout.syntax is not None else _read_sidecar(sidecar_path(real))[0]
            if stamp is None and layout.syntax is not None:
                stamp = _kept_on_disk(real)
                if stamp is None and (found := misplaced_stamp(scan.data or scan.head, layout)):
                    return VerifyResult(shown, "modified", found.hash, scan.digest)  # as verify_bytes: see there
            # A stamp that does not hold onex's hash may hold the bridge's (``_bridge_valid``).
            if (
                stamp is not None
                and stamp.hash != scan.digest
                and _bridge_valid(stamp, layout, scan.digest, _whole(scan, f, st.st_size))
            ):
                return VerifyResult(shown, "valid", stamp.hash, scan.digest)
    except StampError as exc:
        return VerifyResult(shown, "error", None, None, str(exc))
    except OSError as exc:
        return VerifyResult(shown, "error", None, None, f"{shown}: {describe_os_error(exc)}")
    return _verdict(shown, stamp, scan.digest)
