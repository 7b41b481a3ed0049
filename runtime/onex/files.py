"""Which files to stamp: file-type detection and the directory walk.

**File types.** ``detect_file_type(name, head)`` returns one of ``FILE_TYPES``: ``image``, ``document``,
``audio``, ``video``, ``archive``, ``code``, ``text``, ``data`` or ``binary``. Magic bytes win over the extension,
because a PNG named ``logo.py`` is still a PNG; then the extension (or a well-known name such as ``Makefile``)
decides. A head that contains a NUL byte is ``binary`` whatever its extension says, since no text format this
project stamps can contain NUL. Without a known extension the head decides: valid UTF-8 is ``text`` (``code``
when it starts with a shebang), anything else is ``binary``. Only the first ``SNIFF_SIZE`` bytes are examined,
so a multi-gigabyte file is classified without reading it.

**The walk.** ``iter_files(roots, excludes=...)`` yields one ``WalkEntry`` per file to stamp, or per path that
could not be walked (``entry.problem`` says why to a person, ``entry.kind`` to a program: a ``WalkProblemKind``,
which also tells a deliberate omission from an error); it never raises for a bad path, so one unreadable directory
does not stop a run. Rules:

- ``.git`` is never entered; onex sidecars (``*.onex.yaml``) and onex temporary files (``is_temp``) are never
  yielded, since stamping a sidecar would make a sidecar of the sidecar and a temporary file is an unfinished write.
- With ``remove_stale_temps=True`` (``onex stamp`` sets it, ``onex verify`` does not: verifying changes nothing)
  the walk deletes the onex temporary files it meets that no live stamper owns (``is_stale_temp``): in every
  directory it lists, and next to each file given as a root, only that file's. A stamper killed mid-write
  leaves one behind and nothing else would ever remove it. It removes nothing else, and never in a directory it
  was not asked to walk.
- ``.gitignore`` and ``.onexignore`` in every walked directory apply to that directory and below, as in git;
  ``excludes`` apply from each root and take precedence over both. The supported subset of the gitignore syntax:
  blank lines and ``#`` comments; ``\\`` escapes; ``*`` and ``?`` (never matching ``/``); ``[...]`` classes
  (``[!...]`` negates); ``**`` as a whole segment (``**/x``, ``x/**``, ``a/**/b``); a trailing ``/`` matches
  directories only; a pattern with a ``/`` at the start or in the middle is anchored to its ignore file's
  directory, one without matches the name at any depth; ``!`` re-includes, the last matching pattern wins; and, as
  in git, nothing inside an excluded directory can be re-included, because the walk does not enter it. Not
  supported: git's global excludes and ``.git/info/exclude``.
- Symlinks are followed only while they stay inside the root (compared after resolving both); one pointing out
  of it is reported, not followed. A file reached through several links is yielded once; a directory link back
  to one of its own ancestors is reported as a symlink loop, as is a chain of links that never ends. A root
  given explicitly is used even if it is a symlink.
- Sockets, FIFOs and devices are reported (opening a FIFO would block the run).
- With ``skip_read_only=True`` (``onex stamp`` without ``--force``) a file whose mode bits do not let the user write
  it is reported (``READ_ONLY``), not yielded: the bits are read, not ``os.access``, since root may write anything,
  and an atomic replace (a rename) would otherwise go through whatever the file's mode says. See ``is_read_only``.
  A file the user may not read either is yielded, and stamping it fails (permission denied): an error, not a choice.
- ``onex stamp`` and ``onex verify`` walk alike, so they agree: a symlink out of the root is an omission (both say
  skipped), a loop or a broken link an error in both.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from onex._frozen import maker, quick_init

FILE_TYPES: Final = ("image", "document", "audio", "video", "archive", "code", "text", "data", "binary")

# How much of a file's head is examined to classify it. Large enough that a text file with a long license
# header is still judged on real content, small enough to cost nothing next to hashing.
SNIFF_SIZE: Final = 64 * 1024

SIDECAR_SUFFIX: Final = ".onex.yaml"
# Temporary files of an atomic write in progress (see stamps.py): ``.<name>.onex-tmp.<pid>.<random>``, named for
# the file they will replace and the process writing them, so a later run can tell a dead writer's from a live one's.
# Files ending ``.onex-tmp`` are the same thing as written before the pid was part of the name.
TEMP_MARK: Final = ".onex-tmp."
TEMP_SUFFIX: Final = ".onex-tmp"
# A temporary file left this long (seconds since its last write) is stale whatever its pid says: the pid may have
# been reused, or belong to another host or PID namespace sharing the directory. A live write touches its file
# continuously, and the only pause, fsync before the rename, is far shorter.
STALE_TEMP_AGE: Final = 3600.0
# The part of a name a temporary file keeps, in bytes: with the mark, a pid and mkstemp's 8 characters the whole
# name stays under the usual 255-byte limit whatever the original's length.
_TEMP_NAME_BYTES: Final = 100
# mkstemp's random part is 8 of [a-z0-9_]; only names of exactly these shapes are ever deleted.
_TEMP_NAME: Final = re.compile(r"\.(.*)\.onex-tmp\.([0-9]{1,10})\.[a-z0-9_]{8}", re.DOTALL)
_LEGACY_TEMP_NAME: Final = re.compile(r"\..*\.[a-z0-9_]{8}\.onex-tmp", re.DOTALL)
IGNORE_FILES: Final = (".gitignore", ".onexignore")


def _table(**groups: str) -> dict[str, str]:
    """``{category: "space separated keys"}`` -> ``{key: category}``; keeps the tables below readable."""
    return {key: category for category, keys in groups.items() for key in keys.split()}


_EXTENSIONS: Final = _table(
    image=".png .jpg .jpeg .gif .webp .bmp .ico .tif .tiff .svg .heic .avif",
    document=".pdf .doc .docx .odt .rtf .xls .xlsx .ods .ppt .pptx .odp .epub",
    audio=".mp3 .wav .ogg .oga .flac .m4a .aac .opus .wma .aiff",
    video=".mp4 .m4v .mov .mkv .webm .avi .wmv .mpg .mpeg .ogv",
    archive=".zip .gz .tgz .tar .bz2 .xz .zst .7z .rar .jar .whl .war .lz4",
    code=(
        ".py .pyi .pyw .sh .bash .zsh .ksh .fish .rb .pl .pm .r .js .mjs .cjs .jsx .ts .mts .cts .tsx .go .rs"
        " .c .h .cc .cpp .cxx .hpp .hh .hxx .java .kt .kts .scala .swift .cs .dart .groovy .gradle .proto .sql"
        " .lua .hs .css .scss .less .html .htm .xhtml .vue .svelte .mk .cmake .php .ps1 .bat"
    ),
    text=".txt .md .markdown .rst .adoc .text .log",
    data=(
        ".json .jsonl .ndjson .jsonc .yaml .yml .toml .ini .cfg .conf .env .xml .csv .tsv .parquet .avro"
        " .sqlite .db .lock .ipynb"
    ),
    binary=".exe .dll .so .dylib .o .a .class .pyc .wasm .bin",
)
_NAMES: Final = _table(
    code="makefile gnumakefile dockerfile containerfile jenkinsfile vagrantfile gemfile rakefile cmakelists.txt",
    data=".gitignore .onexignore .dockerignore .gitattributes .editorconfig",
    text="license copying readme authors notice",
)

# (signature at offset 0, category); tar's "ustar" at 257 is checked on its own. Every signature either
# contains bytes that cannot start a text file or is followed in real files by such bytes, so a text file
# is never taken for one of these.
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "image"),
    (b"\xff\xd8\xff", "image"),
    (b"GIF87a", "image"),
    (b"GIF89a", "image"),
    (b"II*\x00", "image"),
    (b"MM\x00*", "image"),
    (b"%PDF-", "document"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "document"),  # OLE2: legacy .doc/.xls/.ppt
    (b"PK\x03\x04", "archive"),  # also .docx/.xlsx/.jar; the extension refines it below
    (b"PK\x05\x06", "archive"),  # empty zip
    (b"\x1f\x8b", "archive"),
    (b"\xfd7zXZ\x00", "archive"),
    (b"7z\xbc\xaf\x27\x1c", "archive"),
    (b"\x28\xb5\x2f\xfd", "archive"),  # zstd
    (b"Rar!\x1a\x07", "archive"),
    (b"OggS\x00", "audio"),
    (b"fLaC", "audio"),
    (b"\x1a\x45\xdf\xa3", "video"),  # Matroska / WebM
    (b"\x7fELF", "binary"),
    (b"\xfe\xed\xfa\xce", "binary"),  # Mach-O
    (b"\xfe\xed\xfa\xcf", "binary"),
    (b"\xcf\xfa\xed\xfe", "binary"),
    (b"\xca\xfe\xba\xbe", "binary"),  # Java class / Mach-O fat
    (b"\x00asm", "binary"),
    (b"SQLite format 3\x00", "data"),
    (b"PAR1", "data"),
)
_BZIP2: Final = re.compile(rb"BZh[1-9]1AY&SY")
_ID3: Final = re.compile(rb"ID3[\x02-\x04]\x00")  # "ID3" alone would take a text about ID3 tags for an MP3
_MP3_FRAME_SYNC: Final = (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")
# A zip whose extension names an office or package format keeps that more useful category.
_ZIP_CONTAINERS: Final = frozenset({"document", "archive"})


def _by_first_byte() -> dict[int, list[tuple[bytes, str]]]:
    table: dict[int, list[tuple[bytes, str]]] = {}
    for signature, category in _MAGIC:
        table.setdefault(signature[0], []).append((signature, category))
    return table


# Signatures by their first byte, so that one set lookup rejects almost every text file; the extra bytes start
# the signatures checked by code in magic_type (RIFF, BZh, ID3, an ISO box size, an MP3 frame sync).
_MAGIC_BY_FIRST_BYTE: Final = _by_first_byte()
_MAGIC_FIRST_BYTES: Final = frozenset(_MAGIC_BY_FIRST_BYTE) | {ord("R"), ord("B"), ord("I"), 0x00, 0xFF}


def suffix_of(name: str) -> str:
    """The lower-cased extension of a file name, as ``PurePath.suffix`` defines it (``.bashrc`` has none)."""
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def _ext_category(name: str) -> str | None:
    lowered = name.lower()
    if lowered in _NAMES:
        return _NAMES[lowered]
    return _EXTENSIONS.get(suffix_of(lowered))


def magic_type(head: bytes) -> str | None:
    """The category a file's magic bytes announce, or ``None`` when no known signature matches."""
    if head.startswith(b"ustar", 257):
        return "archive"
    if not head or head[0] not in _MAGIC_FIRST_BYTES:
        return None
    for signature, category in _MAGIC_BY_FIRST_BYTE.get(head[0], ()):
        if head.startswith(signature):
            return category
    if head.startswith(b"RIFF"):
        form = head[8:12]
        riff = {b"WAVE": "audio", b"AVI ": "video", b"WEBP": "image"}.get(form)
        if riff is not None:
            return riff
    # An ISO media box: a big-endian 32-bit size (so the head starts with NULs), then "ftyp".
    if head.startswith(b"\x00\x00") and head[4:8] == b"ftyp":
        brand = head[8:12]
        return "audio" if brand in (b"M4A ", b"M4B ") else "image" if brand in (b"avif", b"heic") else "video"
    if _BZIP2.match(head):
        return "archive"
    if _ID3.match(head):
        return "audio"
    if head.startswith(_MP3_FRAME_SYNC):
        return "audio"
    return None


_NUL: Final = 0
"""The NUL byte as the int a ``bytes`` holds: ``_NUL in head`` is a ``memchr``, where ``b"\\x00" in head`` has CPython
first try the operand as a byte's number and format (then drop) a TypeError, which costs more than the search."""


def is_utf8_text(head: bytes, *, complete: bool) -> bool:
    """Whether ``head`` is NUL-free UTF-8; ``complete=False`` forgives a character cut off at the end."""
    return _NUL not in head and _decodes(head, complete=complete)


def _decodes(head: bytes, *, complete: bool) -> bool:
    if head.isascii():  # the common case, and far cheaper than decoding
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte sequence cut by the sniff window is not an error; anything earlier is.
        return not complete and exc.reason == "unexpected end of data" and exc.start >= len(head) - 3
    return True


@quick_init
@dataclass(frozen=True, slots=True)
class Sniff:
    """What a file's name and head say about it."""

    file_type: str  # one of FILE_TYPES
    binary: bool  # magic bytes of a binary format, or a NUL byte: content onex never modifies
    utf8: bool  # valid, NUL-free UTF-8 (always False when ``binary``)


_sniff = maker(Sniff)  # built at about half the cost of the class's call (``onex._frozen.maker``)


def sniff(path_or_name: str | os.PathLike[str], head: bytes, *, complete: bool) -> Sniff:
    """Classify a file from its name and its first ``SNIFF_SIZE`` bytes (see the module docstring).

    ``complete`` says ``head`` is the whole file, so a multi-byte character cut off at its end is an error.
    """
    name = os.path.basename(os.fspath(path_or_name))
    if len(head) > SNIFF_SIZE:
        head, complete = head[:SNIFF_SIZE], False
    by_name = _ext_category(name)
    by_magic = magic_type(head)
    if by_magic is not None:
        if by_magic == "archive" and head.startswith(b"PK") and by_name in _ZIP_CONTAINERS:
            return _sniff(by_name, binary=True, utf8=False)
        return _sniff(by_magic, binary=True, utf8=False)
    if _NUL in head:
        return _sniff("binary", binary=True, utf8=False)
    utf8 = _decodes(head, complete=complete)
    if by_name is not None:
        return _sniff(by_name, binary=False, utf8=utf8)
    if not utf8:
        return _sniff("binary", binary=False, utf8=False)
    return _sniff("code" if head.startswith(b"#!") else "text", binary=False, utf8=True)


def detect_file_type(path_or_name: str | os.PathLike[str], head: bytes) -> str:
    """Classify a file from its name and the first bytes of its content (see the module docstring).

    ``head`` may be empty (classify by name alone) or any prefix of the content; only ``SNIFF_SIZE`` bytes
    are looked at, and a shorter head is taken to be the whole file.
    """
    return sniff(path_or_name, head, complete=len(head) < SNIFF_SIZE).file_type


def is_sidecar(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an onex sidecar, which is never stamped itself."""
    return os.fspath(path).endswith(SIDECAR_SUFFIX)


def temp_prefix(name: str, pid: int | None = None) -> str:
    """The start of the name of a temporary file that will replace file ``name``: ``.<name>.onex-tmp.<pid>.``."""
    kept = os.fsdecode(os.fsencode(name)[:_TEMP_NAME_BYTES])  # cut by bytes; a cut character stays surrogate-escaped
    return f".{kept}{TEMP_MARK}{os.getpid() if pid is None else pid}."


def is_temp(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` (a path or a file name) is an onex temporary file, which is never stamped or verified."""
    base = os.path.basename(os.fspath(name))
    return base.endswith(TEMP_SUFFIX) or _TEMP_NAME.fullmatch(base) is not None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    except OverflowError:
        return False
    return True


def is_stale_temp(path: str | os.PathLike[str], *, now: float | None = None) -> bool:
    """Whether ``path`` is an onex temporary file nobody will finish: its writer's pid is not running, or it was
    last written ``STALE_TEMP_AGE`` seconds ago or more (the only test for names from before the pid was in them)."""
    name = os.path.basename(os.fspath(path))
    match = _TEMP_NAME.fullmatch(name)
    if match is None and _LEGACY_TEMP_NAME.fullmatch(name) is None:
        return False
    if match is not None and not _pid_alive(int(match.group(2))):
        return True
    try:
        mtime = os.lstat(path).st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - mtime >= STALE_TEMP_AGE


def _unlink_stale(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not is_stale_temp(path):
        return False
    try:
        os.unlink(path)
    except OSError:  # gone already (another run got there first), or not ours to delete: leave it
        return False
    return True


def _is_temp_for(candidate: str, name: str) -> bool:
    """Whether ``candidate`` is a temporary file written to replace the file named ``name``."""
    match = _TEMP_NAME.fullmatch(candidate)
    if match is not None:
        return candidate.startswith(temp_prefix(name, int(match.group(2))))
    # Before the pid was in the name: ``.<first 100 characters of name>.<random>.onex-tmp``.
    return re.fullmatch(re.escape(f".{name[:100]}.") + r"[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX), candidate) is not None


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the stale onex temporary files of the file ``path`` (those written to replace its real path, in its
    directory) and return them. Lists the directory once: for a file given, not for every file walked."""
    directory, name = os.path.split(os.path.realpath(path))
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.name.startswith(".") and _is_temp_for(e.name, name)]
    except OSError:
        return []
    return [Path(directory, n) for n in sorted(names) if _unlink_stale(os.path.join(directory, n))]


def remove_stale_temps_in(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete every stale onex temporary file in ``directory`` (whichever file it was to replace) and return them.

    For a long-running stamper (the stamping effect) that stamps single files: once per directory it first writes
    into, it removes what a killed predecessor left there, without listing the directory for every file.
    """
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.name.startswith(".") and is_temp(e.name)]
    except OSError:
        return []
    return [Path(directory, n) for n in sorted(names) if _unlink_stale(os.path.join(directory, n))]


# --- gitignore-style patterns ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """One compiled gitignore-style pattern, scoped to ``base`` (a ``/``-separated path relative to the root)."""

    pattern: str  # as written, for messages
    base: str
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool  # matched against the path below ``base``; otherwise against the name alone

    def matches(self, rel: str, *, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.base:
            if not rel.startswith(self.base + "/"):
                return False
            rel = rel[len(self.base) + 1 :]
        target = rel if self.anchored else rel.rpartition("/")[2]
        return self.regex.fullmatch(target) is not None


def _translate(pattern: str) -> str:
    """Translate one gitignore glob to a regular expression (``fnmatch.translate`` lets ``*`` match ``/``)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            whole_segment = (i == 0 or pattern[i - 1] == "/") and (j == n or pattern[j] == "/")
            if j - i >= 2 and whole_segment:
                if j == n:
                    out.append(".*")  # "x/**": everything inside
                else:
                    out.append("(?:.*/)?")  # "**/x" and "a/**/b": zero or more directories
                    j += 1
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "^") else i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def parse_ignore(lines: Sequence[str], base: str = "") -> list[IgnoreRule]:
    """Compile gitignore-style ``lines`` whose anchored patterns are relative to ``base``."""
    rules: list[IgnoreRule] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.endswith("\\ "):  # git keeps trailing spaces only when escaped
            line = line.rstrip(" ")
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate or line.startswith(("\\#", "\\!")):  # "\\#" and "\\!" escape a literal first character
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        rules.append(
            IgnoreRule(
                pattern=raw.strip(),
                base=base,
                regex=re.compile(_translate(line)),
                negate=negate,
                dir_only=dir_only,
                anchored=anchored,
            )
        )
    return rules


def is_ignored(rules: Sequence[IgnoreRule], rel: str, *, is_dir: bool) -> bool:
    """Apply ``rules`` in order to ``rel`` (relative to the root, ``/``-separated); the last match wins."""
    ignored = False
    for rule in rules:
        if rule.negate == ignored and rule.matches(rel, is_dir=is_dir):
            ignored = not rule.negate
    return ignored


# --- the walk -------------------------------------------------------------------------------------------------


class WalkProblemKind(enum.Enum):
    """Why the walk reported a path instead of yielding it as a file to stamp.

    ``omission`` says whether it is a deliberate omission, a path the rules leave out (``onex stamp`` counts it
    skipped, and so does ``onex verify``), rather than an error, a path that should have been walked and could
    not be (counted failed). Callers decide by kind, never by the wording of ``WalkEntry.problem``.
    """

    OUTSIDE_ROOT = "outside-root"
    """A symlink to somewhere outside its root: not followed. An omission."""
    SIDECAR = "sidecar"
    """An onex sidecar given as a root: sidecars are never stamped. An omission."""
    TEMPORARY = "temporary"
    """An onex temporary file given as a root: an unfinished write, never stamped. An omission."""
    NOT_REGULAR = "not-regular"
    """A socket, FIFO or device, which stamping would block on or corrupt. An omission."""
    SYMLINK_LOOP = "symlink-loop"
    """A directory link back to one of its ancestors, or a chain of links that never ends."""
    BROKEN_SYMLINK = "broken-symlink"
    """A symlink whose target does not exist."""
    UNREADABLE = "unreadable"
    """The path could not be read or listed: missing, permission denied, an I/O error."""
    IGNORE_FILE = "ignore-file"
    """A ``.gitignore`` or ``.onexignore`` that could not be read: the rules it holds are unknown."""
    READ_ONLY = "read-only"
    """A file the user may not write, by its mode bits (``skip_read_only``): left alone. An omission."""

    @property
    def omission(self) -> bool:
        return self in _OMISSIONS


_OMISSIONS: Final = frozenset(
    {
        WalkProblemKind.OUTSIDE_ROOT,
        WalkProblemKind.SIDECAR,
        WalkProblemKind.TEMPORARY,
        WalkProblemKind.NOT_REGULAR,
        WalkProblemKind.READ_ONLY,
    }
)


def is_read_only(st: os.stat_result, *, groups: frozenset[int] | None = None) -> bool:
    """Whether a file's mode bits deny the effective user writing it: the owner's bit for its owner, the group's
    for a member of its group, the others' for the rest. Root may write anything, so for root (and on Windows) a
    file is read-only when it has no write bit at all (``chmod a-w``, mode 0444). ACLs are not consulted.
    ``groups``: the user's group ids, when the caller has them (``os.getgroups`` is a system call)."""
    mode = st.st_mode
    if sys.platform == "win32" or os.geteuid() == 0:
        return not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    if st.st_uid == os.geteuid():
        return not mode & stat.S_IWUSR
    members = groups if groups is not None else frozenset((os.getegid(), *os.getgroups()))
    if st.st_gid in members:
        return not mode & stat.S_IWGRP
    return not mode & stat.S_IWOTH


@dataclass(frozen=True, slots=True)
class WalkEntry:
    """A file to stamp (``problem is None``) or a path that could not be walked: why (``problem``, for people) and
    what kind of problem that is (``kind``, for programs). ``problem`` and ``kind`` are both set or both None."""

    path: Path
    problem: str | None = None
    kind: WalkProblemKind | None = None

    def __post_init__(self) -> None:
        if (self.problem is None) != (self.kind is None):
            raise ValueError("a WalkEntry has both a problem and its kind, or neither")


def describe_os_error(exc: OSError) -> str:
    """A short, user-facing reason for an ``OSError`` met while reading or writing a file."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(exc, FileNotFoundError):
        return "no such file (deleted while running?)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return exc.strerror or str(exc)


def _os_problem(path: Path, exc: OSError) -> WalkEntry:
    """The problem entry for ``path``, which could not be read: a symlink loop, or unreadable."""
    kind = WalkProblemKind.SYMLINK_LOOP if exc.errno == errno.ELOOP else WalkProblemKind.UNREADABLE
    return WalkEntry(path, describe_os_error(exc), kind)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def within(path: str, roots: Sequence[str]) -> bool:
    """Whether the real path ``path`` is one of ``roots`` (real paths too) or below one."""
    return any(_within(path, root) for root in roots)


class _Walk:
    """State of one ``iter_files`` call: rules per directory, what was already yielded, where the roots are."""

    def __init__(self, excludes: Sequence[str], remove_stale_temps: bool, skip_read_only: bool = False) -> None:
        self.excludes = excludes
        self.remove_stale_temps = remove_stale_temps
        self.skip_read_only = skip_read_only
        self.groups: frozenset[int] | None = None  # the user's groups, asked once
        self.temps: dict[str, list[str]] = {}  # real directory -> its temporary files, listed once per walk
        self.yielded: set[str] = set()  # real paths of files already yielded: each file once
        self.visited: set[tuple[int, int]] = set()  # (st_dev, st_ino) of directories already walked

    def root(self, root: Path) -> Iterator[WalkEntry]:
        try:
            st = os.stat(root)
        except OSError as exc:
            yield _os_problem(root, exc)
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self.tree(root, st)
        elif stat.S_ISREG(st.st_mode):
            if is_sidecar(root):
                yield WalkEntry(root, "is an onex sidecar; sidecars are never stamped", WalkProblemKind.SIDECAR)
            elif is_temp(root):
                yield WalkEntry(root, "is an onex temporary file; never stamped", WalkProblemKind.TEMPORARY)
            else:
                if self.remove_stale_temps:
                    self.remove_temps_of(root)
                yield from self.file(root, st)
        else:
            yield WalkEntry(root, "not a regular file", WalkProblemKind.NOT_REGULAR)

    def remove_temps_of(self, path: Path) -> None:
        """Remove the stale temporary files of a file given as a root (and only that file's)."""
        directory, name = os.path.split(os.path.realpath(path))
        if directory not in self.temps:
            try:
                with os.scandir(directory) as entries:
                    self.temps[directory] = [e.name for e in entries if is_temp(e.name)]
            except OSError:
                self.temps[directory] = []
        for candidate in self.temps[directory]:
            if _is_temp_for(candidate, name):
                _unlink_stale(os.path.join(directory, candidate))

    def file(self, path: Path, st: os.stat_result) -> Iterator[WalkEntry]:
        real = os.path.realpath(path)
        if real not in self.yielded:
            self.yielded.add(real)
            if self.skip_read_only:
                if self.groups is None and sys.platform != "win32":
                    self.groups = frozenset((os.getegid(), *os.getgroups()))
                # One the user may not read either is not skipped: stamping it fails, "permission denied", an error.
                if is_read_only(st, groups=self.groups) and os.access(path, os.R_OK):
                    mode = f"{stat.S_IMODE(st.st_mode):04o}"
                    yield WalkEntry(
                        path, f"read-only (mode {mode}); --force stamps it anyway", WalkProblemKind.READ_ONLY
                    )
                    return
            yield WalkEntry(path)

    def tree(self, root: Path, root_stat: os.stat_result) -> Iterator[WalkEntry]:
        real_root = os.path.realpath(root)
        # The caller's excludes win over every ignore file, so they are applied after the rules in force.
        excludes = parse_ignore(self.excludes)
        # Depth-first, names sorted, so runs and reports are reproducible. Each frame: the directory, its path
        # relative to the root, the rules in force there, its (dev, ino) and the remaining entries.
        root_id = (root_stat.st_dev, root_stat.st_ino)
        if root_id in self.visited:
            return
        self.visited.add(root_id)
        frames: list[tuple[Path, str, list[IgnoreRule], tuple[int, int], Iterator[os.DirEntry[str]]]] = []
        problems: list[WalkEntry] = []
        first = self._open(root, "", [], problems)
        yield from problems
        if first is None:
            return
        frames.append((root, "", first[0], root_id, first[1]))
        while frames:
            directory, rel_dir, file_rules, _, entries = frames[-1]
            entry = next(entries, None)
            if entry is None:
                frames.pop()
                continue
            if entry.name == ".git":
                continue
            if is_temp(entry.name):  # ours, whatever the ignore rules say; never yielded
                if self.remove_stale_temps and entry.is_file(follow_symlinks=False):
                    _unlink_stale(os.path.join(directory, entry.name))
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            rules = [*file_rules, *excludes]
            path = directory / entry.name
            try:
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    st = os.stat(path)  # raises ELOOP for a chain of links that never ends
                    if not _within(target, real_root):
                        if not is_ignored(rules, rel, is_dir=stat.S_ISDIR(st.st_mode)):
                            yield WalkEntry(
                                path,
                                f"symlink to {target}, outside {real_root}; not followed",
                                WalkProblemKind.OUTSIDE_ROOT,
                            )
                        continue
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ENOENT and entry.is_symlink():
                    yield WalkEntry(path, "broken symlink", WalkProblemKind.BROKEN_SYMLINK)
                else:
                    yield _os_problem(path, exc)
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_ignored(rules, rel, is_dir=is_dir):
                continue
            if is_dir:
                ident = (st.st_dev, st.st_ino)
                if any(frame[3] == ident for frame in frames):
                    yield WalkEntry(
                        path,
                        f"symlink loop: {path} leads back to {os.path.realpath(path)}",
                        WalkProblemKind.SYMLINK_LOOP,
                    )
                    continue
                if ident in self.visited:
                    continue  # already walked through another link
                self.visited.add(ident)
                problems = []
                opened = self._open(path, rel, file_rules, problems)
                yield from problems
                if opened is not None:
                    frames.append((path, rel, opened[0], ident, opened[1]))
            elif stat.S_ISREG(st.st_mode):
                if is_sidecar(entry.name):
                    continue
                yield from self.file(path, st)
            else:
                yield WalkEntry(path, "not a regular file", WalkProblemKind.NOT_REGULAR)

    def _open(
        self,
        directory: Path,
        rel: str,
        inherited: list[IgnoreRule],
        problems: list[WalkEntry],
    ) -> tuple[list[IgnoreRule], Iterator[os.DirEntry[str]]] | None:
        """List ``directory`` and add its ignore files' rules to ``inherited``; on failure record a problem."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(_os_problem(directory, exc))
            return None
        rules = list(inherited)
        for name in IGNORE_FILES:
            ignore_file = directory / name
            try:
                text = ignore_file.read_text(encoding="utf-8", errors="surrogateescape")
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(
                    WalkEntry(
                        ignore_file, f"cannot read ignore file: {describe_os_error(exc)}", WalkProblemKind.IGNORE_FILE
                    )
                )
                continue
            rules.extend(parse_ignore(text.splitlines(), rel))
        return rules, iter(entries)


def iter_files(
    roots: Sequence[str | os.PathLike[str]],
    *,
    excludes: Sequence[str] = (),
    remove_stale_temps: bool = False,
    skip_read_only: bool = False,
) -> Iterator[WalkEntry]:
    """Yield every file to stamp under ``roots`` (files or directories), and every path that could not be walked.

    ``excludes`` are gitignore-style patterns relative to each root; ``remove_stale_temps`` deletes the stale onex
    temporary files met on the way; ``skip_read_only`` reports files the user may not write (``READ_ONLY``) instead
    of yielding them. See the module docstring for the rules.
    """
    walk = _Walk(excludes, remove_stale_temps, skip_read_only)
    for root in roots:
        yield from walk.root(Path(root))
