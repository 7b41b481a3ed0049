"""The stamping effect: BLAKE3-hash and stamp files or in-memory content; emits STAMP_CREATED or STAMP_FAILED.

A batch of commands is stamped in one worker thread hop (file I/O and hashing must not block the event loop,
and one hop per batch instead of per file keeps the overhead low). A per-file problem (missing file, permission
denied, binary content with a text extension...) is a STAMP_FAILED for that workflow, not an exception: the
batch goes on. An unexpected error counts against the circuit breaker and is re-raised so the bus retries.

Only files under ``settings.stamp_roots`` are touched (``ONEX_STAMP_ROOTS``; by default the project root; ``onex
stamp PATH...`` in process: exactly its PATHs). A command whose real path, symlinks resolved, is under none of them
is refused before anything is opened: a STAMP_FAILED, not retryable, naming the rule. A file's sidecar and
temporary file live next to it and count as the file. Content commands touch no file and are not confined.
A file open in another process is not replaced (``stamps.stamp_file`` says ``busy``): a STAMP_FAILED that is
retryable, since the file may be closed by the next attempt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from onex import stamps
from onex.clock import epoch_ms
from onex.envelope import OnexEnvelopeV1, derived_at, derived_from
from onex.exceptions import StampError
from onex.files import remove_stale_temps_in, within
from onex.metrics import Histogram
from onex.nodes import EffectNode, Event

from ...models import ModelStampCommand, ModelStampCreated, ModelStampFailed
from .models import ModelStampingEffectConfig

CONTENT_PATH = "<content>"


def row_id(stamp: stamps.Stamp, namespace: str, file_path: str) -> uuid.UUID:
    """The stamp's id, its row's in ``metadata_stamps``: one per file and content, like the row's natural key. The
    uid written in the file is the file's identity and survives a restamp of changed content, which is a row (a
    version) of its own; derived, so handling the command again gives the same id and writes nothing new. It begins
    with the stamp's time (``ts``, to the millisecond; ``onex.envelope.derived_at``), so that the table's index on it
    grows at its end as stamps are made, unless the stamp was made before ``onex.envelope.ORDERED_SINCE_MS`` (its row
    keeps the id it was stored under, and a restamp of content unchanged since still names it) or its time cannot be
    read (a stamp another tool wrote): then its bits are all derived, as they were."""
    # derived_id(uuid.UUID(stamp.uid), namespace, file_path, stamp.hash), encoded here: a stamp's uid is the canonical
    # text of a UUID (onex.filetypes.UID), whose 16 bytes are its hex digits; anything else is read as UUID() reads it.
    digits = stamp.uid.replace("-", "")
    uid = bytes.fromhex(digits) if len(digits) == 32 else uuid.UUID(stamp.uid).bytes
    data = b"\x1f".join((uid, namespace.encode(), file_path.encode(), stamp.hash.encode()))
    try:
        made = datetime.fromisoformat(stamp.ts)
    except ValueError:  # a time another tool wrote
        return derived_from(data)
    return derived_at(epoch_ms(made if made.tzinfo else made.replace(tzinfo=UTC)), data)  # naive: UTC, as utc_text


class NodeStampingEffect(EffectNode):
    config_model = ModelStampingEffectConfig
    config: ModelStampingEffectConfig
    uses_breaker = True  # every batch is stamped through breaker_for(...).call
    cached_lookups = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.author = self.config.author
        self.inline_bytes = self.config.thread_offload_bytes
        self.stamp_roots = self.settings.stamp_root_paths()
        self._swept: set[str] = set()  # directories cleared of stale temp files (a race only sweeps one twice)
        self.hash_durations = Histogram()  # seconds to read and BLAKE3-hash one file or content (/metrics)

    async def handle_stamp_file(self, events: Sequence[Event]) -> None:
        commands = [(env, cmd) for env, cmd in events if isinstance(cmd, ModelStampCommand)]
        # Small in-memory content is cheaper to stamp inline than to hand to a thread; anything touching the
        # file system, or large content, goes to a worker thread in one hop for the whole batch.
        inline = all(c.content is not None and len(c.content) <= self.inline_bytes for _, c in commands)

        # Hash times are collected by the worker thread and filed here, on the event loop, which owns the histogram.
        timings: list[float] = []

        async def stamp_batch() -> list[OnexEnvelopeV1]:
            if inline:
                return self._stamp_all(commands, timings)
            return await asyncio.to_thread(self._stamp_all, commands, timings)

        # The breaker of the batch's event type (its consumes entry's own, else the node's: docs/contracts.md). A batch
        # is of one type whenever that type has a breaker of its own: the bus joins no topic of an event with its own
        # resilience block to another's.
        breaker = self.breaker_for(events[0].envelope.event_type) if events else self.breaker
        results = await breaker.call(stamp_batch)
        for seconds in timings:
            self.hash_durations.observe(seconds)
        created = [e for e in results if e.event_type == "STAMP_CREATED"]
        failed = [e for e in results if e.event_type == "STAMP_FAILED"]
        await self.publish_envelopes("STAMP_CREATED", created)
        await self.publish_envelopes("STAMP_FAILED", failed)

    def _stamp_all(
        self, commands: Sequence[tuple[OnexEnvelopeV1, ModelStampCommand]], timings: list[float]
    ) -> list[OnexEnvelopeV1]:
        return [self._stamp_one(env, cmd, timings) for env, cmd in commands]

    def _stamp_one(self, envelope: OnexEnvelopeV1, cmd: ModelStampCommand, timings: list[float]) -> OnexEnvelopeV1:
        rich = cmd.stamp_type == "rich"
        author = cmd.author or self.author
        if cmd.content is not None or cmd.content_base64 is not None:
            return self._stamp_content(envelope, cmd, timings, rich=rich, author=author)
        assert cmd.file_path is not None
        refusal = self._outside_roots(cmd.file_path)
        if refusal is not None:
            return self._failed(envelope, cmd, refusal)
        directory = os.path.dirname(os.path.realpath(cmd.file_path))
        if directory not in self._swept:
            # Once per directory and process: what a stamper killed mid-write (a predecessor of this process, or a
            # replica) left in it; after that, a temp file here is one of ours or of a live stamper.
            self._swept.add(directory)
            remove_stale_temps_in(directory)
        result = stamps.stamp_file(
            cmd.file_path,
            rich=rich,
            namespace=cmd.namespace,
            author=author,
            dry_run=cmd.dry_run,
            roots=self.stamp_roots,
        )
        if result.hash_seconds:
            timings.append(result.hash_seconds)
        if result.status == "busy":
            return self._failed(envelope, cmd, result.error or stamps.BUSY, retryable=True)
        if result.status == "failed" or result.stamp is None:
            return self._failed(envelope, cmd, result.error or "stamping failed")
        return self.envelope(
            "STAMP_CREATED",
            ModelStampCreated.built(
                workflow_id=cmd.workflow_id,
                stamp_id=row_id(result.stamp, cmd.namespace, cmd.file_path),
                file_path=cmd.file_path,
                file_hash=result.stamp.hash,
                file_size=result.size,
                file_type=result.file_type,
                namespace=cmd.namespace,
                stamp_type=result.stamp.kind,
                status="unchanged" if result.status == "unchanged" else "stamped",
                dry_run=cmd.dry_run,
                stamp=_stamp_fields(result.stamp),
                stamped_content=None,
                file_mode=None if result.mode is None else f"{result.mode:04o}",
            ),
            causation=envelope,
        )

    def _stamp_content(
        self, envelope: OnexEnvelopeV1, cmd: ModelStampCommand, timings: list[float], *, rich: bool, author: str
    ) -> OnexEnvelopeV1:
        name = cmd.file_path or "content.txt"
        binary = cmd.content_base64 is not None
        if cmd.content_base64 is not None:
            try:
                data = base64.b64decode(cmd.content_base64, validate=True)
            except binascii.Error as exc:
                return self._failed(envelope, cmd, f"content_base64: not base64 ({exc})")
        else:
            data = cmd.content.encode() if cmd.content is not None else b""
        started = time.perf_counter()
        try:
            if binary:  # bytes sent as bytes get a sidecar and come back as they were, whatever their type
                made = stamps.stamp_sidecar(data, file_name=name, namespace=cmd.namespace, author=author)
            else:
                made = stamps.stamp_content(data, file_name=name, rich=rich, namespace=cmd.namespace, author=author)
        except StampError as exc:
            return self._failed(envelope, cmd, str(exc))
        timings.append(time.perf_counter() - started)  # hashing, and rendering the stamp into the content
        stamped, stamp = made.content, made.stamp
        return self.envelope(
            "STAMP_CREATED",
            ModelStampCreated.built(
                workflow_id=cmd.workflow_id,
                stamp_id=row_id(stamp, cmd.namespace, cmd.file_path or CONTENT_PATH),
                file_path=cmd.file_path or CONTENT_PATH,
                file_hash=stamp.hash,
                file_size=made.size,  # without a stamp, as a file's (StampResult.size)
                file_type=made.file_type,
                namespace=cmd.namespace,
                stamp_type=stamp.kind,
                # stamp_content hands back the very same object for content already stamped with its hash; a sidecar
                # stamp never changes the content, so for those "unchanged" cannot be told from the bytes.
                status="unchanged" if stamped is data and stamp.kind != "sidecar" else "stamped",
                dry_run=cmd.dry_run,
                stamp=_stamp_fields(stamp),
                # Bytes sent as bytes are never changed (a sidecar stamp): the caller has them already.
                stamped_content=None if cmd.dry_run or binary else stamped.decode(errors="replace"),
                file_mode=None,
            ),
            causation=envelope,
        )

    def _outside_roots(self, file_path: str) -> str | None:
        """Why ``file_path`` may not be touched, or None when its real path is under a stamp root."""
        real = os.path.realpath(file_path)
        if within(real, self.stamp_roots):
            return None
        shown = real if real == os.path.abspath(file_path) else f"{file_path} (a link to {real})"
        return f"refused: {shown} is outside the stamp roots (ONEX_STAMP_ROOTS={os.pathsep.join(self.stamp_roots)})"

    def _failed(
        self, envelope: OnexEnvelopeV1, cmd: ModelStampCommand, error: str, *, retryable: bool = False
    ) -> OnexEnvelopeV1:
        return self.envelope(
            "STAMP_FAILED",
            ModelStampFailed(
                workflow_id=cmd.workflow_id,
                file_path=cmd.file_path,
                namespace=cmd.namespace,
                error=error,
                retryable=retryable,
            ),
            causation=envelope,
        )


def _stamp_fields(stamp: stamps.Stamp) -> dict[str, Any]:
    return {"uid": stamp.uid, "hash": stamp.hash, "ts": stamp.ts, "kind": stamp.kind, **stamp.fields}
