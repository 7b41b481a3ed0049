"""The benchmarks' checks: a run that lost a row fails (SystemExit naming the table and the counts) before any figure,
every run is checked, the achieved rate is what the server answered, and one nearest-rank percentile serves them all.
Fakes stand in for the runs, so a lossy store is a count dict and a slow server a fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from onex.http import PREFIX

from bench import bus_kafka, e2e, instructions, loadgen, metastore, multiprocess
from bench.http import check_stored, gateway

ITEMS = 20


def rows(items: int, **wrong: int) -> dict[str, int]:
    """The counts of a sound run over ``items`` items, with ``wrong``'s in their place."""
    sound = {
        "workflow_executions": items,
        "metadata_stamps": items,
        "fsm_transitions": 2 * items + 3,
        "workflow_steps": 2 * items,
        "failed": 0,
    }
    return {**sound, **wrong}


# --- e2e: check_rows ---------------------------------------------------------------------------------------------


def test_a_sound_run_passes_the_check() -> None:
    e2e.check_rows("onex", rows(ITEMS), ITEMS)
    e2e.check_rows("ceiling", rows(ITEMS, workflow_executions=0, metadata_stamps=0, workflow_steps=0), ITEMS,
                   stored=False)  # fmt: skip


def test_a_lost_row_ends_the_benchmark_naming_the_table_and_the_counts() -> None:
    with pytest.raises(SystemExit) as raised:
        e2e.check_rows("e2e onex run (repeat 1)", rows(ITEMS, metadata_stamps=ITEMS - 1), ITEMS)
    message = str(raised.value)
    assert "e2e onex run (repeat 1)" in message
    assert f"metadata_stamps: found {ITEMS - 1}, expected {ITEMS}" in message
    assert "workflow_executions" not in message.split("(counts")[0]  # only what is wrong is named


@pytest.mark.parametrize(
    "wrong",
    [{"workflow_executions": ITEMS - 1}, {"workflow_steps": 2 * ITEMS - 1}, {"fsm_transitions": 2 * ITEMS - 1},
     {"failed": 1}],
)  # fmt: skip
def test_every_table_and_every_failed_workflow_counts(wrong: dict[str, int]) -> None:
    with pytest.raises(SystemExit, match=next(iter(wrong)).replace("failed", "failed workflows")):
        e2e.check_rows("onex", rows(ITEMS, **wrong), ITEMS)
    assert not e2e._as_expected(rows(ITEMS, **wrong), ITEMS)


def test_the_ceiling_must_have_no_failed_workflow() -> None:
    with pytest.raises(SystemExit, match="failed workflows: found 2, expected 0"):
        e2e.check_rows("ceiling", rows(ITEMS, failed=2), ITEMS, stored=False)


# --- e2e: every run of every repeat is checked ---------------------------------------------------------------------


class FakeRuns:
    """``run_onex`` (and ``run_onex_postgres``) without onex: each call's counts sound, but for call number ``lossy``
    (from 1), which loses a stamp row (a workflow, in the ceiling, whose store keeps nothing anyway)."""

    def __init__(self, lossy: int) -> None:
        self.lossy = lossy
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, items: list[str], url: str, **options: Any) -> tuple[float, dict[str, int]]:
        self.calls.append(options)
        n = len(items)
        counts = (
            rows(n, workflow_executions=0, metadata_stamps=0, workflow_steps=0) if options.get("discard") else rows(n)
        )
        if len(self.calls) == self.lossy:
            counts = {**counts, "failed": 1} if options.get("discard") else {**counts, "metadata_stamps": n - 1}
        if (tails := options.get("tails")) is not None:
            tails.append(0.01)
        return 0.1, counts


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """bench/results under ``tmp_path``, and the process left untuned (``tune_process`` freezes the test's objects)."""
    monkeypatch.setattr(e2e, "RESULTS", tmp_path)
    monkeypatch.setattr(e2e, "tune_process", lambda: None)
    return tmp_path


# A repeat's onex runs on SQLite, in order: the onex run, one at a time, without checkpoints, the ceiling, behind.
RUNS_A_REPEAT = 5


@pytest.mark.parametrize("lossy", range(1, 2 * RUNS_A_REPEAT + 1))
def test_a_lossy_run_anywhere_in_any_repeat_fails_the_sqlite_benchmark(
    lossy: int, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRuns(lossy)
    monkeypatch.setattr(e2e, "run_onex", fake)
    with pytest.raises(SystemExit, match="rows not as expected"):
        e2e.run(items=ITEMS, repeat=2, alone=2)
    assert len(fake.calls) == lossy  # at once: no run after the lossy one
    assert not (results / "e2e.json").exists()  # no figure written


def test_the_sqlite_benchmark_of_sound_runs_writes_its_figures(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRuns(0)
    monkeypatch.setattr(e2e, "run_onex", fake)
    assert e2e.run(items=ITEMS, repeat=2, alone=2)["rows_as_expected"]
    assert len(fake.calls) == 2 * RUNS_A_REPEAT
    assert (results / "e2e.json").exists()


@pytest.mark.parametrize("lossy", range(1, 5))  # a repeat: the onex run, the run without checkpoints
def test_a_lossy_run_in_any_repeat_fails_the_postgres_benchmark(
    lossy: int, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def server(dsn: str) -> tuple[str, int | None]:
        return "16.0", None

    async def raw_floor(*args: Any, **options: Any) -> float:
        return 0.1

    fake = FakeRuns(lossy)
    monkeypatch.setattr(e2e, "_server", server)
    monkeypatch.setattr(e2e, "run_raw_postgres", raw_floor)
    monkeypatch.setattr(e2e, "run_onex_postgres", fake)
    with pytest.raises(SystemExit, match=r"PostgreSQL.*metadata_stamps: found 19, expected 20"):
        e2e.run_postgres(items=ITEMS, repeat=2, url="postgresql://postgres@127.0.0.1:1/none")
    assert len(fake.calls) == lossy
    assert not (results / "e2e_postgres.json").exists()


# --- instructions / calls: run_kind ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["persisted", "persisted_behind"])
def test_run_kind_checks_every_table_of_a_persisted_run(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lossy(items: list[str], url: str, **options: Any) -> tuple[float, dict[str, int]]:
        return 0.1, rows(len(items), metadata_stamps=0, workflow_steps=0)  # every workflow, no stamp, no step

    monkeypatch.setattr(e2e, "run_onex", lossy)
    with pytest.raises(SystemExit, match="metadata_stamps: found 0, expected 20"):
        instructions.run_kind(kind, e2e.make_items(ITEMS), tmp_path)


def test_run_kind_asks_the_ceiling_only_for_no_failed_workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def discarded(items: list[str], url: str, **options: Any) -> tuple[float, dict[str, int]]:
        return 0.1, rows(len(items), workflow_executions=0, metadata_stamps=0, workflow_steps=0)

    monkeypatch.setattr(e2e, "run_onex", discarded)
    instructions.run_kind("ceiling", e2e.make_items(ITEMS), tmp_path)


# --- http: the rows behind the 200s ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_http_benchmark_checks_the_rows_behind_the_200s() -> None:
    async with gateway("onex-test-checks-") as (url, settle, runtime), httpx.AsyncClient(base_url=url) as client:
        for n in range(3):
            answer = await client.post(f"{PREFIX}/stamp", json={"content": f"{n}\n", "file_path": f"{n}.txt"})
            assert answer.status_code == 200, answer.text
        await settle()
        await check_stored(runtime, 3, "POST /stamp")
        with pytest.raises(SystemExit, match="metadata_stamps: found 3, expected 4; workflow_executions: found 3"):
            await check_stored(runtime, 4, "POST /stamp")  # a 200 whose rows the store does not hold


# --- percentiles -----------------------------------------------------------------------------------------------------


def test_the_percentile_is_the_nearest_rank() -> None:
    hundred = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert loadgen.percentile(hundred, 50) == 50
    assert loadgen.percentile(hundred, 95) == 95
    assert loadgen.percentile(hundred, 99) == 99
    assert loadgen.percentile(hundred, 100) == 100
    twenty = [float(v) for v in range(1, 21)]
    assert loadgen.percentile(twenty, 95) == 19
    assert loadgen.percentile(twenty, 99) == 20
    assert loadgen.percentile([7.0], 95) == 7.0
    assert loadgen.percentile([], 95) == 0.0


def test_every_benchmark_takes_its_percentiles_from_the_one_helper() -> None:
    twenty = [float(v) for v in range(1, 21)]
    assert vars(e2e)["percentile"] is loadgen.percentile  # imported, not a copy
    assert e2e._percentiles(twenty) == {"n": 20, "p50": 10, "p95": 19, "max": 20}
    assert metastore._ms([v / 1000 for v in twenty])["p95_ms"] == 19


# --- loadgen: the open loop's achieved rate --------------------------------------------------------------------------


class FakeClock:
    """Time that passes only when told: ``sleep`` and the fake server's answers move it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class SlowConnection:
    """A keep-alive connection to a server that takes ``seconds`` to answer each request (one at a time)."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    async def exchange(self, request: bytes) -> int:
        self.clock.now += self.seconds
        await asyncio.sleep(0)
        return 200

    def close(self) -> None:
        return None


@pytest.mark.anyio
async def test_the_open_loop_reports_the_rate_the_server_answered_not_the_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()

    async def connect(target: loadgen.Target) -> SlowConnection:
        return SlowConnection(clock, 0.02)  # at most 50 answers a second on one connection

    monkeypatch.setattr(loadgen, "connect", connect)
    result = await loadgen.run(
        "http://127.0.0.1:1", "/stamp", rate=200, duration=1, connections=1, size=64, warmup=0.5,
        namespace="bench", clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    assert result["requests"] == 200  # every request due in the window was answered, late
    assert result["ok"] == 300  # the warm-up's too
    assert result["rps"] <= 50  # what one connection to a 20 ms server can answer, not the 200 asked for
    assert result["duration_s"] >= 4  # 200 answers of 20 ms each, one after another


# --- the raw Kafka loops: a deadline --------------------------------------------------------------------------------


class SilentConsumer:
    """A consumer whose fetches never hold a record: a lost record, a broker gone. Fails the test past a few fetches
    rather than hang it: a loop without a deadline would fetch forever."""

    def __init__(self) -> None:
        self.fetches = 0

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.fetches += 1
        assert self.fetches <= 3, "read on past the deadline"
        await asyncio.sleep(0)
        return {}

    async def commit(self, offsets: object = None) -> None:
        raise AssertionError("nothing read, nothing to commit")


class Producer:
    async def send(self, topic: str, *, value: bytes, key: bytes) -> None:
        await asyncio.sleep(0)

    async def flush(self) -> None:
        return None


@pytest.mark.anyio
async def test_a_raw_kafka_read_that_gets_nothing_fails_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_kafka, "STALL_S", 0.0)  # past the deadline at the first empty fetch

    async def handle(batch: dict[Any, list[Any]]) -> None:
        raise AssertionError("no batch")

    with pytest.raises(RuntimeError, match="raw aiokafka: no record for 0 s, 0 of 5 read"):
        await bus_kafka.read_all(SilentConsumer(), 5, "raw aiokafka", handle)


@pytest.mark.anyio
async def test_the_multiprocess_raw_loop_fails_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_kafka, "STALL_S", 0.0)
    values = [(b"k", b"v")] * 5
    with pytest.raises(RuntimeError, match="no record for 0 s, 0 of 5 read"):
        await multiprocess._send_and_read(Producer(), "t", values, SilentConsumer())
