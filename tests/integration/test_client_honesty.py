"""``onex stamp`` against a Kafka deployment tells the truth: the real CLI in a subprocess, on a tansu broker.

- ``--timeout`` bounds the whole run, submission included: with more files than the client keeps in flight
  (``MAX_PENDING``) and nobody answering, the run ends at its deadline, every file ``pending`` (never ``failed``),
  each submitted one with the correlation id its request carries on the broker, and exit code 3;
- ``--no-wait`` joins no consumer group (a bus on which every join fails still submits) and returns once the broker
  has every request;
- a store that cannot be read for the summary (a PostgreSQL connection cut, through ``CuttableProxy``) is retried
  until it answers, and if it never does within the deadline, the run still reports what it heard on the bus and
  exits 0: the nodes did their work, only the summary's aggregates are missing.

Every run gets its own ``ONEX_ENV``, so its topics and consumer groups are its own on the shared broker.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from onex._kafka import KafkaBus
from onex.client import MAX_PENDING
from onex.envelope import OnexEnvelopeV1, topic_name

from tests.fixtures.deployment import NODES, ROOT, Deployment, onex_command, upgrade_schema
from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS
from tests.fixtures.postgres import CuttableProxy, through

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.anyio]

# As the other Kafka integration tests: tansu takes session/2 for each group join and holds an empty fetch for about
# half of fetch_max_wait_ms.
CONSUMER_QUERY = "session_timeout_ms=2000&heartbeat_interval_ms=200&fetch_max_wait_ms=10"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def onex(*args: str, env: str, limit: float = 180.0) -> subprocess.CompletedProcess[bytes]:
    """The ``onex`` CLI in a subprocess, on the topics of ``env`` and no other ``ONEX_*`` setting of ours; the
    terminal is wide enough that no table cell is folded."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    environ.update({"ONEX_ENV": env, "ONEX_ROOT": str(ROOT), "COLUMNS": "500"})
    with anyio.fail_after(limit):
        return await anyio.run_process([*onex_command(), *args], check=False, env=environ)


def files(directory: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True)
    made = []
    for i in range(count):
        path = directory / f"module_{i:04d}.py"
        path.write_text(f"VALUE = {i}\n")
        made.append(path)
    return made


def problems(stdout: str) -> list[list[str]]:
    """The rows of the problems table: status, path, correlation id, reason."""
    rows = [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in stdout.splitlines()]
    return [row for row in rows if len(row) == 4 and row[0] in ("failed", "skipped", "busy", "pending")]


def summary(stdout: str) -> dict[str, int]:
    """The counts row of the summary table, by column."""
    match = re.search(r"┃ ((?:stamped|submitted) ┃[a-z ┃]+)┃\n.*\n│([\d│ ]+)│", stdout)
    assert match is not None, stdout
    columns = [c.strip() for c in match.group(1).split("┃")]
    return dict(zip(columns, (int(c) for c in match.group(2).split("│")), strict=True))


async def requests_on_the_broker(bootstrap: str, env: str, count: int) -> list[OnexEnvelopeV1]:
    """The first ``count`` STAMP_REQUESTED records of ``env`` on the broker, read by a consumer group of the test's."""
    seen: list[OnexEnvelopeV1] = []
    enough = asyncio.Event()

    async def collect(envelopes: Sequence[OnexEnvelopeV1]) -> None:
        seen.extend(envelopes)
        if len(seen) >= count:
            enough.set()

    async with KafkaBus(bootstrap, consumer_options=TEST_CONSUMER_OPTIONS) as bus:
        topic = topic_name("STAMP_REQUESTED", env=env, cls="cmd")
        await bus.subscribe([topic], f"{env}.test-watch", batch_handler=collect)
        with anyio.fail_after(60):
            await enough.wait()
    return seen


async def test_a_timeout_reports_every_file_pending_with_its_correlation_id_and_exits_3(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Nothing consumes the requests: the client submits MAX_PENDING of them, then waits for room until the deadline
    ends the run. Nothing is reported failed; the submitted files carry the ids their requests have on the broker."""
    env = f"to{uuid.uuid4().hex[:8]}"
    made = files(tmp_path / "tree", MAX_PENDING + 50)

    result = await onex(
        "stamp",
        str(tmp_path / "tree"),
        "--bus",
        f"kafka://{kafka_bootstrap}?{CONSUMER_QUERY}",
        "--store",
        f"sqlite:///{tmp_path / 'onex.db'}",
        "--timeout",
        "15",
        env=env,
    )

    out = result.stdout.decode()
    assert result.returncode == 3, out + result.stderr.decode()
    assert summary(out) == {"stamped": 0, "unchanged": 0, "skipped": 0, "failed": 0, "pending": len(made)}
    rows = problems(out)
    assert sorted(row[1] for row in rows) == sorted(str(p) for p in made)  # every file, once
    assert {row[0] for row in rows} == {"pending"}
    submitted = {row[2]: row[1] for row in rows if row[2] != "-"}
    assert all(UUID.match(cid) for cid in submitted)
    # The deadline came while the client waited for room: it submitted at most MAX_PENDING, and not every file.
    assert 0 < len(submitted) <= MAX_PENDING
    unsubmitted = [row for row in rows if row[2] == "-"]
    assert len(unsubmitted) == len(made) - len(submitted)
    assert all(row[3].startswith("not submitted") for row in unsubmitted)
    assert f"pending: {len(submitted)} submitted workflow(s) had no outcome in time" in out
    assert f"pending: {len(unsubmitted)} file(s) were not submitted before the deadline" in out

    on_broker = await requests_on_the_broker(kafka_bootstrap, env, len(submitted))
    assert {str(e.correlation_id): e.payload["file_path"] for e in on_broker} == submitted


async def test_no_wait_joins_no_consumer_group_and_returns_once_the_broker_has_the_requests(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """On a bus where every consumer group join fails at once (``join_timeout_s`` far below what any broker takes),
    ``--no-wait`` still submits: it joins none. Waiting for the outcomes needs a group, and fails there."""
    env = f"nw{uuid.uuid4().hex[:8]}"
    made = files(tmp_path / "tree", 10)
    no_join = f"kafka://{kafka_bootstrap}?{CONSUMER_QUERY}&join_timeout_s=0.001"
    store = f"sqlite:///{tmp_path / 'onex.db'}"

    submitted = await onex("stamp", str(tmp_path / "tree"), "--bus", no_join, "--store", store, "--no-wait", env=env)

    out = submitted.stdout.decode()
    assert submitted.returncode == 0, out + submitted.stderr.decode()
    assert summary(out) == {"submitted": len(made), "skipped": 0, "failed": 0, "pending": 0}
    on_broker = await requests_on_the_broker(kafka_bootstrap, env, len(made))
    assert sorted(e.payload["file_path"] for e in on_broker) == sorted(str(p) for p in made)

    waited = await onex("stamp", str(tmp_path / "tree"), "--bus", no_join, "--store", store, env=env)

    assert waited.returncode == 1, waited.stdout.decode()
    assert "got no partition assignment" in waited.stderr.decode()


class WatchedProxy(CuttableProxy):
    """A ``CuttableProxy`` that can be awaited until it has refused some number of connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self._refusal = asyncio.Event()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        before = self.refused
        await super()._accept(client_r, client_w)
        if self.refused > before:
            self._refusal.set()

    async def until_refused(self, count: int) -> None:
        while self.refused < count:
            self._refusal.clear()
            await self._refusal.wait()


@pytest.mark.postgres
@pytest.mark.timeout(300)
async def test_a_store_that_cannot_be_read_for_the_summary_is_retried_and_never_fails_the_run(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    """The five nodes write to PostgreSQL directly; the client reads its summary through a proxy that is cut.

    Mended once the client has tried three times (an open that fails is not retried by the store itself, so the
    third try is the client's own retry), the summary comes from the store. Never mended, the run ends at its
    deadline with the counts heard on the bus, says the store could not be read, and exits 0.
    """
    env = f"sr{uuid.uuid4().hex[:8]}"
    upgrade_schema(postgres_dsn)
    deployment = Deployment(
        bus_url=f"kafka://{kafka_bootstrap}?{CONSUMER_QUERY}",
        store_url=postgres_dsn,
        logs=tmp_path / "logs",
        # Files are stamped only under the stamp roots (by default the project the deployment runs in).
        env={"ONEX_ENV": env, "ONEX_HEARTBEAT_INTERVAL_S": "0.5", "ONEX_STAMP_ROOTS": str(tmp_path)},
    )
    proxy = WatchedProxy.before(postgres_dsn)
    with deployment:
        await deployment.start(NODES)
        async with proxy as port:
            store = through(postgres_dsn, port)
            await proxy.sever()
            first = files(tmp_path / "first", 5)

            async def mend_after_three_refusals() -> None:
                await proxy.until_refused(3)
                proxy.mend()

            async with anyio.create_task_group() as tg:
                tg.start_soon(mend_after_three_refusals)
                mended = await onex(
                    "stamp", str(tmp_path / "first"), "--bus", deployment.bus_url, "--store", store, env=env
                )
                tg.cancel_scope.cancel()

            out = mended.stdout.decode()
            assert mended.returncode == 0, out + mended.stderr.decode() + deployment.logs_tail()
            assert proxy.refused >= 3
            assert not proxy.cut  # mended while the client retried, and read then
            assert summary(out) == {"stamped": len(first), "unchanged": 0, "skipped": 0, "failed": 0, "pending": 0}
            assert "aggregates per namespace (store)" in out
            assert "could not be read" not in out

            await proxy.sever()
            second = files(tmp_path / "second", 5)
            refused = proxy.refused

            never = await onex(
                "stamp",
                str(tmp_path / "second"),
                "--bus",
                deployment.bus_url,
                "--store",
                store,
                "--timeout",
                "20",
                env=env,
            )

            out = never.stdout.decode()
            assert never.returncode == 0, out + never.stderr.decode() + deployment.logs_tail()
            assert proxy.refused > refused + 1  # tried again, not once only
            assert summary(out) == {"stamped": len(second), "unchanged": 0, "skipped": 0, "failed": 0, "pending": 0}
            assert "the store could not be read" in out
            assert "the counts above are the outcomes heard on the bus" in out
            assert "aggregates per namespace (store)" not in out
        await deployment.stop()
