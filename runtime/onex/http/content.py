"""What the gateway answers without a workflow: hashing content, finding and verifying its stamp, and checking a
metadata block against the metadata protocol (whose required fields are ``onex.stamps.RICH_KEYS``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Final, Literal, TypeVar

from blake3 import blake3

from onex import stamps
from onex.exceptions import StampError
from onex.files import FILE_TYPES
from onex.filetypes import WHOLE_LIMIT, Layout, analyse, not_whole
from onex.http.models import NAMESPACE_PATTERN, HashResult, Issue, ProtocolResult, StampView, VerifyResult

T = TypeVar("T")

# Content this large is hashed or verified on a worker thread instead of in the event loop.
_THREAD_FROM: Final = 1024 * 1024
_NAMESPACE_RE: Final = re.compile(NAMESPACE_PATTERN)
_SEMVER_RE: Final = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
# A version as the bridge writes it: "1.0" (or 1.0, which YAML reads as a float), "1", or a full "1.0.0".
_SHORT_VERSION_RE: Final = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)){0,2}$")
# The protocol versions a block may declare: what onex writes into rich blocks, and O.N.E. v0.1's own (the
# bridge's `protocol_version: 1.0`, onex.settings.DEFAULT_PROTOCOL_VERSION), each with its compatible ones.
PROTOCOL_VERSIONS: Final = (stamps.PROTOCOL_VERSION, "1.0.0")


def version_text(value: Any) -> str | None:
    """``value`` as a full semantic version ("1.0" and the float 1.0 -> "1.0.0"), or None when it is none."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        value = repr(value) if isinstance(value, float) else str(value)
    if not isinstance(value, str) or not _SHORT_VERSION_RE.fullmatch(value) or "e" in value:
        return None
    parts = value.split(".")
    return ".".join(parts + ["0"] * (3 - len(parts)))


def version_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is no ``key`` this server speaks (a request's or a block's), or None when it is one."""
    supported = PROTOCOL_VERSIONS if key == "protocol_version" else (stamps.METADATA_VERSION,)
    version = version_text(value)
    if version is None:
        return f"{key} must be a version such as {supported[-1]} or 1.0"
    if not any(_supported(version, s) for s in supported):
        return f"{key} {value} is not supported (this server speaks {' or '.join(supported)})"
    return None


async def maybe_thread(size: int, fn: Callable[[], T]) -> T:
    """``fn()``, on a worker thread when it works on ``size`` bytes or more."""
    return await asyncio.to_thread(fn) if size >= _THREAD_FROM else fn()


class StreamingHash:
    """BLAKE3 of content with its stamp removed, fed in chunks, as ``stamps.hash_file`` computes it: the first
    ``HEAD_SIZE`` bytes (where a stamp can be) are held until the stamp is found, the rest streams through. Content
    whose stamp only the whole of it can find (UTF-16/32 text, a plugin's type) is held whole up to ``WHOLE_LIMIT``
    bytes, as ``hash_file`` reads it; beyond that, as there, only its head decides (``filetypes.not_whole``)."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self.received = 0
        self.removed = 0
        self._head = bytearray()
        self._hasher: Any = None
        self._whole: Layout | None = None  # the head's layout while the content is held whole

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self._hasher is not None:
            self._hasher.update(chunk)
            return
        self._head += chunk
        if self._whole is not None:
            if len(self._head) > WHOLE_LIMIT:
                head = bytes(self._head[: stamps.HEAD_SIZE])
                why = f"larger than {WHOLE_LIMIT} bytes"
                self._start(not_whole(self._whole, head, at_eof=False, why=why))
        elif len(self._head) >= stamps.HEAD_SIZE:
            layout = analyse(self.file_name, bytes(self._head[: stamps.HEAD_SIZE]), at_eof=False)
            if layout.whole is None:
                self._start(layout)
            else:
                self._whole = layout

    def _start(self, layout: Layout) -> None:
        head, self._head = self._head, bytearray()
        self.removed = layout.stamp_end - layout.keep_end
        self._hasher = blake3()
        view = memoryview(head)
        self._hasher.update(view[: layout.keep_end])
        self._hasher.update(view[layout.stamp_end :])

    def result(self) -> HashResult:
        if self._hasher is None:
            # All of it is here: stripped as stamps.hash_file strips content it reads at once.
            data = bytes(self._head)
            stripped = stamps.strip_stamp(data, file_name=self.file_name)
            self.removed = len(data) - len(stripped)
            self._head = bytearray()
            self._hasher = blake3()
            self._hasher.update(stripped)
        return {
            "hash": str(self._hasher.hexdigest()),
            "algorithm": "blake3",
            "size": self.received - self.removed,
            "received_bytes": self.received,
            "stamp_removed": self.removed > 0,
            "file_path": self.file_name,
        }


def hash_content(data: bytes, name: str) -> HashResult:
    hasher = StreamingHash(name)
    hasher.update(data)
    return hasher.result()


def _stamp_view(stamp: stamps.Stamp | None) -> StampView | None:
    if stamp is None:
        return None
    return {"uid": stamp.uid, "hash": stamp.hash, "ts": stamp.ts, "kind": stamp.kind, "fields": stamp.fields}


def verify(data: bytes, name: str, sidecar: bytes | None) -> VerifyResult:
    """Whether ``data`` carries a stamp (or has a ``sidecar``) that matches it."""
    result = stamps.verify_bytes(data, file_name=name, sidecar=sidecar)
    if sidecar is not None:
        try:
            stamp: stamps.Stamp | None = stamps.parse_sidecar(sidecar, name + ".onex.yaml")
        except StampError:
            stamp = None
    else:
        stamp = stamps.find_stamp(data, file_name=name)
    assert result.status != "skipped"  # only a walk skips
    return {
        "file_path": name,
        "status": result.status,
        "expected_hash": result.expected,
        "actual_hash": result.actual,
        "stamp": _stamp_view(stamp),
        "error": result.error,
    }


# --- the metadata protocol ---------------------------------------------------------------------------------------


def _issue(field: str, code: str, message: str) -> Issue:
    return {"field": field, "code": code, "message": message}


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return None


def _supported(version: str, supported: str) -> bool:
    """Same major version; for 0.x (where a minor version may break) the same minor too."""
    major, minor, _ = (int(p) for p in version.split("."))
    s_major, s_minor, _ = (int(p) for p in supported.split("."))
    return major == s_major and (major > 0 or minor == s_minor)


def check_protocol(data: bytes, name: str, *, sidecar: bytes | None, metadata: dict[str, Any] | None) -> ProtocolResult:
    """Check a metadata block (``metadata``, a sidecar, or the rich block in ``data``) against the protocol."""
    issues: list[Issue] = []
    stripped = stamps.strip_stamp(data, file_name=name)
    actual = stamps.hash_bytes(stripped)
    fields: dict[str, Any] | None = metadata
    source: Literal["metadata", "sidecar", "content"] = "metadata"
    if fields is None and sidecar is not None:
        source = "sidecar"
        try:
            fields = stamps.parse_sidecar(sidecar, name + ".onex.yaml").fields
        except StampError as exc:
            issues.append(_issue("sidecar", "invalid", str(exc)))
    elif fields is None:
        source = "content"
        stamp = stamps.find_stamp(data, file_name=name)
        if stamp is None:
            issues.append(
                _issue(
                    "content",
                    "missing",
                    "no metadata block found (a block needs a 64-hex hash and a "
                    "uuid, and sits where the file's stamp goes)",
                )
            )
        elif stamp.kind != "rich":
            issues.append(_issue("content", "not_rich", "a lightweight stamp carries no metadata block"))
        else:
            fields = stamp.fields
    if fields is not None:
        issues.extend(_check_fields(fields, actual=actual, size=len(stripped)))
    return {
        "valid": not issues,
        "source": source,
        "issues": issues,
        "metadata": fields,
        "expected_hash": fields.get("hash") if fields else None,
        "actual_hash": actual,
        "supported_versions": {
            "metadata_version": stamps.METADATA_VERSION,
            "protocol_version": stamps.PROTOCOL_VERSION,
        },
    }


def _check_fields(fields: Mapping[str, Any], *, actual: str, size: int) -> Iterator[Issue]:
    for key in stamps.RICH_KEYS:
        if key not in fields or fields[key] is None:
            yield _issue(key, "missing", f"{key} is required")
    for key in ("metadata_version", "protocol_version"):
        value = fields.get(key)
        if value is not None and (problem := version_problem(key, value)) is not None:
            yield _issue(key, "format" if version_text(value) is None else "unsupported", problem)
    for key in ("name", "author"):
        value = fields.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            yield _issue(key, "type", f"{key} must be a non-empty string")
    namespace = fields.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace)):
        yield _issue("namespace", "format", "namespace must be 1-256 characters of [A-Za-z0-9._:/-]")
    uid = fields.get("uuid")
    if uid is not None:
        try:
            uuid.UUID(str(uid))
        except ValueError:
            yield _issue("uuid", "format", "uuid must be a UUID")
    times: dict[str, datetime] = {}
    for key in ("created_at", "last_modified_at"):
        value = fields.get(key)
        if value is None:
            continue
        parsed = _timestamp(value)
        if parsed is None or parsed.tzinfo is None:
            yield _issue(key, "format", f"{key} must be an ISO 8601 timestamp with a UTC offset")
        else:
            times[key] = parsed
    if len(times) == 2 and times["last_modified_at"] < times["created_at"]:
        yield _issue("last_modified_at", "order", "last_modified_at is before created_at")
    digest = fields.get("hash")
    if digest is not None:
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            yield _issue("hash", "format", "hash must be 64 lowercase hex characters (BLAKE3)")
        elif digest != actual:
            yield _issue("hash", "mismatch", f"hash {digest} does not match the content's {actual}")
    file_type = fields.get("file_type")
    if file_type is not None and file_type not in FILE_TYPES:
        yield _issue("file_type", "unknown", f"file_type must be one of {', '.join(FILE_TYPES)}")
    declared = fields.get("size")
    if declared is not None:
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
            yield _issue("size", "type", "size must be a non-negative integer")
        elif declared != size:
            yield _issue("size", "mismatch", f"size {declared} does not match the content's {size} bytes")
