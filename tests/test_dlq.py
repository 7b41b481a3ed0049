"""``onex dlq list|show|replay`` on the memory bus: the runtime keeps dead letters in the store, and a replay hosts
the nodes in the CLI's process and runs the original through them again.

The dead letter comes from the real orchestrator: a STAMP_REQUESTED whose payload its schema refuses
(``stamp_type: gold``) is dead-lettered at once. Replayed, the orchestrator refuses it again, so handling it again
shows as exactly one new dead letter of the same original.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from onex.bus import MemoryBus
from onex.cli import main
from onex.dlq import dead_letter_row
from onex.envelope import OnexEnvelopeV1, dead_letter, topic_name
from onex.exceptions import StoreUnavailable
from onex.runtime import Runtime
from onex.settings import Settings
from onex.stores import open_store
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = topic_name("STAMP_REQUESTED", cls="cmd")


@pytest.fixture(autouse=True)
def _no_onex_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("ONEX_")]:
        monkeypatch.delenv(name)


def onex(*args: str) -> Result:
    return CliRunner().invoke(main, ["--root", str(ROOT), "dlq", *args], catch_exceptions=False)


def rejected_request() -> OnexEnvelopeV1:
    return OnexEnvelopeV1(
        event_type="STAMP_REQUESTED",
        source_node_id="test-dlq",
        correlation_id=uuid.uuid4(),
        payload={"namespace": "onex.test.dlq", "stamp_type": "gold"},
    )


async def dead_letter_one(url: str, envelope: OnexEnvelopeV1) -> None:
    """Host every node on the memory bus and ``url``, and publish ``envelope`` to the orchestrator's requests."""
    settings = Settings(root=ROOT, store=url, heartbeat_interval_s=0)
    async with Runtime(settings) as runtime:
        await runtime.bus.publish(REQUESTS, envelope)
        assert isinstance(runtime.bus, MemoryBus)
        await runtime.bus.join()  # the dead letter is in the store once the bus is idle


@pytest.mark.anyio
async def test_a_dead_letter_the_store_could_not_take_is_held_and_kept(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the memory bus the store holds a dead letter's only copy: one that comes while the store is unavailable is
    held, its message unacknowledged, and written once the store is back."""
    settings = Settings(root=ROOT, store=store_url, heartbeat_interval_s=0)
    async with Runtime(settings) as runtime:
        real, refused = runtime.store.add_dead_letters, list[Any]()

        async def unavailable_once(rows: Any) -> None:
            if not refused:
                refused.extend(rows)
                raise StoreUnavailable("database is locked")
            await real(rows)

        monkeypatch.setattr(runtime.store, "add_dead_letters", unavailable_once)
        sent = rejected_request()
        await runtime.bus.publish(REQUESTS, sent)
        assert isinstance(runtime.bus, MemoryBus)
        await runtime.bus.join()
        kept = await runtime.store.list_dead_letters()

    assert refused
    assert [letter.original_event_id for letter in kept] == [sent.event_id]


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'onex.db'}"


def test_list_show_and_replay_a_dead_letter_on_the_memory_bus(store_url: str) -> None:
    request = rejected_request()
    asyncio.run(dead_letter_one(store_url, request))

    [letter] = as_json(onex("list", "--store", store_url, "-o", "json"))["items"]
    assert letter["original_event_id"] == str(request.event_id)
    assert letter["topic"] == f"{REQUESTS}.dlq"
    assert letter["original_topic"] == REQUESTS
    assert letter["event_type"] == "STAMP_REQUESTED"
    assert letter["group"]
    assert letter["error_type"] == "PayloadError"
    assert "stamp_type" in letter["error"]
    assert (letter["replays"], letter["replayed_at"]) == (0, None)

    # show, by the dead letter's id or by the original's: the original envelope whole.
    for wanted in (letter["event_id"], str(request.event_id)):
        [shown] = as_json(onex("show", wanted, "--store", store_url, "-o", "json"))
        original = OnexEnvelopeV1.model_validate(shown["letter"]["payload"]["original"])
        assert original == request
    table = onex("show", letter["event_id"], "--store", store_url)
    assert table.exit_code == 0
    assert '"stamp_type": "gold"' in table.stdout
    assert letter["event_id"] in table.stdout

    replayed = as_json(onex("replay", letter["event_id"], "--store", store_url, "-o", "json"))
    assert [(r["event_id"], r["status"], r["ok"]) for r in replayed] == [(letter["event_id"], "replayed", True)]

    # The orchestrator handled it again, exactly once: it refused it again, one new dead letter of that original.
    first, again = as_json(onex("show", str(request.event_id), "--store", store_url, "-o", "json"))
    assert first["event_id"] == letter["event_id"]
    assert (first["replays"], first["replayed_at"] is not None) == (1, True)
    assert again["event_id"] != letter["event_id"]
    assert again["replays"] == 0
    assert again["original_event_id"] == str(request.event_id)
    assert len(as_json(onex("list", "--store", store_url, "-o", "json"))["items"]) == 2

    # Named again: skipped (exit 0) unless --force.
    skipped = as_json(onex("replay", letter["event_id"], "--store", store_url, "-o", "json"))
    assert [r["status"] for r in skipped] == ["skipped"]
    forced = as_json(onex("replay", letter["event_id"], "--force", "--store", store_url, "-o", "json"))
    assert [r["status"] for r in forced] == ["replayed"]
    assert len(as_json(onex("list", "--store", store_url, "-o", "json"))["items"]) == 3


def test_replay_all_takes_only_letters_not_replayed_and_of_the_topic_asked(store_url: str) -> None:
    asyncio.run(dead_letter_one(store_url, rejected_request()))
    asyncio.run(dead_letter_one(store_url, rejected_request()))

    elsewhere = as_json(onex("replay", "--all", "--topic", "dev.nowhere.v1", "--store", store_url, "-o", "json"))
    assert elsewhere == []
    first = as_json(onex("replay", "--all", "--topic", REQUESTS, "--store", store_url, "-o", "json"))
    assert [r["status"] for r in first] == ["replayed", "replayed"]
    letters = as_json(onex("list", "--store", store_url, "-o", "json"))["items"]
    # Each replay was refused again: two new letters, not replayed yet; the two replayed ones say so.
    assert sorted(r["replays"] for r in letters) == [0, 0, 1, 1]
    replayed_ids = {r["event_id"] for r in first}
    assert {r["event_id"] for r in letters if r["replays"] == 1} == replayed_ids


def test_list_limits_with_an_honest_headline_and_pipes_whole_values(store_url: str) -> None:
    async def store_letters() -> list[str]:
        ids = []
        async with open_store(store_url) as store:
            await store.upgrade()
            rows = []
            for _ in range(3):
                letter = dead_letter(rejected_request(), topic=REQUESTS, error="x" * 300, attempts=3)
                rows.append(dead_letter_row(letter, group="orchestrator"))
                ids.append(str(letter.event_id))
            await store.add_dead_letters(rows)
        return ids

    ids = asyncio.run(store_letters())
    table = onex("list", "--limit", "2", "--store", store_url)
    assert table.exit_code == 0, table.output
    assert "showing 2 of 3 dead letter(s)" in table.stdout
    page = as_json(onex("list", "--limit", "2", "--store", store_url, "-o", "json"))
    assert (len(page["items"]), page["total"], page["limit"], page["offset"]) == (2, 3, 2, 0)  # as the table says
    assert "x" * 300 in table.stdout  # a piped table is never cut
    assert sum(i in table.stdout for i in ids) == 2
    lines = onex("list", "--store", store_url, "-o", "jsonl").stdout.splitlines()
    assert sorted(json.loads(line)["event_id"] for line in lines) == sorted(ids)


def test_a_multi_line_error_is_one_line_in_the_tables_and_whole_in_json(store_url: str) -> None:
    """A pydantic error spans lines; a script reading the piped table takes each line for a row."""
    try:
        OnexEnvelopeV1.model_validate({"event_type": "STAMP_REQUESTED"})
    except ValidationError as exc:
        error = exc
    assert len(str(error).splitlines()) > 2

    async def store_letter() -> str:
        async with open_store(store_url) as store:
            await store.upgrade()
            letter = dead_letter(rejected_request(), topic=REQUESTS, error=error, attempts=1)
            await store.add_dead_letters([dead_letter_row(letter, group="orchestrator")])
        return str(letter.event_id)

    letter_id = asyncio.run(store_letter())
    one_line = " ".join(str(error).split())
    listed = onex("list", "--store", store_url)
    assert listed.exit_code == 0, listed.output
    [row] = [line for line in listed.stdout.splitlines() if letter_id in line]
    assert f"ValidationError: {one_line}" in row
    shown = onex("show", letter_id, "--store", store_url)
    assert shown.exit_code == 0, shown.output
    [row] = [line for line in shown.stdout.splitlines() if line.startswith("│ error ")]
    assert one_line in row
    [whole] = as_json(onex("list", "--store", store_url, "-o", "json"))["items"]
    assert whole["error"] == str(error)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["replay", str(uuid.uuid4()), "--all"], "not both"),
        (["replay"], "or --all"),
        (["replay", "not-a-uuid"], "is not an event id"),
        (["show", "nope"], "is not an event id"),
    ],
)
def test_usage_errors_exit_2_with_one_line(store_url: str, args: list[str], says: str) -> None:
    result = onex(*args, "--store", store_url)
    assert result.exit_code == 2
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_store_where_no_database_is_is_an_error_and_left_uncreated(tmp_path: Path) -> None:
    """As every command that reads the store: a mistyped path is said, not migrated into an empty database."""
    nowhere = tmp_path / "typo.db"
    for args in (["list"], ["show", str(uuid.uuid4())], ["replay", "--all"]):
        result = onex(*args, "--store", f"sqlite:///{nowhere}")
        assert result.exit_code == 1, (args, result.output)
        assert f"no SQLite database at {nowhere}" in result.stderr, args
    assert not nowhere.exists()


def test_an_unknown_id_is_a_failure_named_in_the_answer(store_url: str) -> None:
    asyncio.run(dead_letter_one(store_url, rejected_request()))  # a store that exists, holding another letter
    missing = str(uuid.uuid4())
    result = onex("replay", missing, "--store", store_url, "-o", "json")
    assert result.exit_code == 1
    assert [(r["requested"], r["status"]) for r in json.loads(result.stdout)] == [(missing, "not-found")]
    shown = onex("show", missing, "--store", store_url)
    assert shown.exit_code == 1
    assert missing in shown.stderr
