"""``onex meta``, ``onex flags`` and ``onex config-store``, run as a user runs them: the installed console script in
a subprocess, on a SQLite file that ``onex db upgrade`` migrated. Flags and configurations are written through the
Python API (the CLI reads them); metadata entries through the CLI itself.

Exit codes: 0 ok, 1 a failure (not found, a version conflict, a flag that resolved with an error), 2 usage error,
each error one line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from onex.metastore.models import ConfigCreate, FlagCreate
from onex.metastore.service import Metastore
from onex.settings import Settings
from onex.store import MAX_OFFSET
from onex.stores import open_store

from tests.test_cli import ROOT, command, environment


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/onex.db"
    assert onex("db", "upgrade", "--store", url).returncode == 0
    return url


def onex(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), "--root", str(ROOT), *args],
        env={**environment(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok_json(*args: str, env: dict[str, str] | None = None) -> Any:
    done = onex(*args, "-o", "json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def seed(url: str) -> None:
    """A flag with a targeting rule (enabled) and two configurations of one service, through the Python API."""

    async def main() -> None:
        async with open_store(url) as s:
            m = Metastore(s, None, settings=Settings(root=ROOT))
            rule = {"conditions": ["country equals NL"], "variant": "on"}
            body = FlagCreate(name="beta", default_value="old", variants={"on": "new"}, rules=[rule], tags=["web"])
            flag = await m.create_flag("default", body, actor="test")
            await m.enable_flag("default", flag.id, expected_version=None, actor="test")
            await m.create_flag("default", FlagCreate(name="dark", default_value=False), actor="test")
            for name, values in (
                ("base", {"pool": 5, "password": {"$secret": "env:BILLING_PW"}}),
                ("over", {"pool": 9}),
            ):
                config = {"service_id": "billing", "name": name, "environment": "production", "values": values}
                await m.create_config("default", ConfigCreate.model_validate(config), actor="test")

    asyncio.run(main())


def test_meta_set_get_history_and_rollback(store: str) -> None:
    created = ok_json("meta", "set", "db.pool", '{"size": 5}', "--namespace", "svc", "--store", store, "--tag", "db")
    assert (created["version"], created["value"], created["tags"]) == (1, {"size": 5}, ["db"])
    assert created["created_by"].startswith("cli:")
    changed = onex("meta", "set", "db.pool", "8", "--namespace", "svc", "--store", store, "--actor", "ops")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == "updated svc/db.pool (tenant default): version 2"

    got = ok_json("meta", "get", "db.pool", "--namespace", "svc", "--store", store)
    assert (got["value"], got["version"], got["updated_by"], got["tags"]) == (8, 2, "ops", ["db"])
    table = onex("meta", "get", "db.pool", "--namespace", "svc", "--store", store)
    assert table.returncode == 0
    assert "version 2" in table.stdout

    page = ok_json("meta", "history", "db.pool", "--namespace", "svc", "--store", store)
    history = page["items"]
    assert (history[0]["version"], history[0]["change"], history[0]["actor"]) == (2, "update", "ops")
    assert [v["snapshot"]["value"] for v in history] == [8, {"size": 5}]
    # The page, as the table says it ("1 of 2 version(s)") and as the HTTP API answers one.
    one = ok_json("meta", "history", "db.pool", "--namespace", "svc", "--limit", "1", "--store", store)
    assert (len(one["items"]), one["total"], one["limit"], one["offset"]) == (1, 2, 1, 0)
    shown = onex("meta", "history", "db.pool", "--namespace", "svc", "--limit", "1", "--store", store).stdout
    assert "1 of 2 version(s)" in shown

    rolled = ok_json(
        "meta", "rollback", "db.pool", "1", "--namespace", "svc", "--store", store, "--expected-version", "2"
    )
    assert (rolled["version"], rolled["value"]) == (3, {"size": 5})

    # A stale expected version writes nothing.
    stale = onex("meta", "set", "db.pool", "9", "--namespace", "svc", "--store", store, "--expected-version", "2")
    assert "is at version 3, not the expected 2" in one_error_line(stale, 1)
    assert ok_json("meta", "get", "db.pool", "--namespace", "svc", "--store", store)["version"] == 3
    # Text stays text; another tenant sees none of it.
    text = ok_json("meta", "set", "motd", "hello", "--content-type", "text", "--store", store)
    assert (text["value"], text["content_type"]) == ("hello", "text")
    missing = onex("meta", "get", "motd", "--tenant", "other", "--store", store)
    assert one_error_line(missing, 1) == "error: metadata default/motd not found"


def test_meta_get_shows_a_multi_line_value_on_one_row(store: str) -> None:
    value = "first line\nsecond line\n\tindented"
    assert onex("meta", "set", "motd", value, "--content-type", "text", "--store", store).returncode == 0

    table = onex("meta", "get", "motd", "--store", store)

    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if line.startswith("│ value ")]
    assert "first line second line indented" in row  # one row: a script reading lines sees one value
    assert not any(line.strip("│ ").startswith("second line") for line in table.stdout.splitlines())
    assert ok_json("meta", "get", "motd", "--store", store)["value"] == value  # JSON keeps it whole


def test_meta_usage_errors_are_one_line_exit_2(store: str) -> None:
    not_json = onex("meta", "set", "k", "hello", "--store", store)
    assert "VALUE is not JSON" in one_error_line(not_json, 2)
    control = onex("meta", "set", "bad\nkey", "1", "--store", store)
    assert one_error_line(control, 2).startswith("error: key 'bad\\nkey': String should match pattern")
    bad_version = onex("meta", "rollback", "k", "0", "--store", store)
    assert "VERSION" in one_error_line(bad_version, 2)
    assert onex("meta", "get", "k", "--store", store).returncode == 1  # never set: not found, nothing created


def test_integers_beyond_what_a_store_holds_are_usage_errors(store: str) -> None:
    assert onex("meta", "set", "k", "1", "--store", store).returncode == 0
    huge = str(2**64)  # beyond SQLite's and PostgreSQL's integers

    for args in (
        ("meta", "history", "k", "--offset", huge),
        ("meta", "rollback", "k", huge),
        ("meta", "set", "k", "2", "--expected-version", huge),
        ("flags", "list", "--offset", huge),
    ):
        assert huge in one_error_line(onex(*args, "--store", store), 2), args
    assert ok_json("meta", "history", "k", "--offset", str(MAX_OFFSET), "--store", store)["items"] == []


def test_flags_list_and_eval(store: str) -> None:
    seed(store)
    listed = ok_json("flags", "list", "--store", store)
    assert (listed["total"], listed["limit"], listed["offset"]) == (2, 100, 0)
    flags = {f["name"]: f for f in listed["items"]}
    first = ok_json("flags", "list", "--limit", "1", "--store", store)
    assert (len(first["items"]), first["total"]) == (1, 2)  # "1 of 2", as the table says
    assert (flags["beta"]["state"], flags["beta"]["enabled"], flags["dark"]["state"]) == ("active", True, "draft")
    assert [f["name"] for f in ok_json("flags", "list", "--tag", "web", "--store", store)["items"]] == ["beta"]

    (matched,) = ok_json("flags", "eval", "beta", "-a", "country=NL", "-a", "user_id=u1", "--store", store)
    assert (matched["value"], matched["variant"], matched["reason"]) == ("new", "on", "TARGETING_MATCH")
    every = ok_json("flags", "eval", "--context", '{"country": "DE", "user_id": "u1"}', "--store", store)
    assert {e["flag"]: e["reason"] for e in every} == {"beta": "DEFAULT", "dark": "DISABLED"}
    table = onex("flags", "eval", "beta", "-a", "country=NL", "--store", store)
    assert table.returncode == 0
    assert "TARGETING_MATCH" in table.stdout

    unknown = onex("flags", "eval", "nope", "-o", "json", "--store", store)
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)[0]["error_code"] == "FLAG_NOT_FOUND"
    assert "JSON object" in one_error_line(onex("flags", "eval", "beta", "--context", "[1]", "--store", store), 2)
    assert "NAME=VALUE" in one_error_line(onex("flags", "eval", "beta", "-a", "country", "--store", store), 2)
    assert ok_json("flags", "list", "--tenant", "other", "--store", store)["items"] == []


def test_config_store_effective(store: str) -> None:
    seed(store)
    effective = ok_json("config-store", "effective", "billing", "--env", "production", "--store", store)
    assert effective["values"] == {"pool": 9, "password": {"$secret": "env:BILLING_PW"}}  # the reference only
    assert [s["name"] for s in effective["sources"]] == ["base", "over"]
    resolved = ok_json(
        "config-store", "effective", "billing", "--env", "production", "--resolve-secrets", "--store", store,
        env={"BILLING_PW": "s3cret"},
    )  # fmt: skip
    assert resolved["values"]["password"] == "s3cret"
    table = onex("config-store", "effective", "billing", "--env", "production", "--store", store)
    assert table.returncode == 0
    assert "base v1, over v1" in table.stdout
    assert "s3cret" not in table.stdout
    assert ok_json("config-store", "effective", "billing", "--env", "staging", "--store", store)["values"] == {}
    no_env = onex("config-store", "effective", "billing", "--store", store)
    assert one_error_line(no_env, 2) == "error: --env is required: development, staging or production"
