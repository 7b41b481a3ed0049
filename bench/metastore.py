"""Benchmark: the metastore (issue 17), each part against a raw baseline measured in the same run.

- **flags** (in process): ``CompiledFlag.evaluate`` of a flag with three targeting rules (two conditions, a regular
  expression, a number) and a 25 % rollout, over 10,000 distinct contexts, against ``plain``: a hand-written Python
  function doing the same comparisons and the same SHA-256 bucketing with the constants inlined. Both are checked to
  give the same answer for every context first. Two mixes: *mixed* (about a sixth of the contexts match a rule,
  the rest reach the rollout) and *rollout* (none matches a rule: every condition is tested and every context
  hashed, the slowest path). Targets: >= 200,000 evaluations/s and >= 0.5 of ``plain``.
- **history** (``onex.metastore.Metastore`` on SQLite, a file in a temporary directory): a metadata entry with
  ``--versions`` (10,000) versions, written with ``update_many``; then the latency of reading the latest version
  (``get``), the newest page of the history (``versions``, 50), and rolling back to a random earlier version
  (``rollback``, which writes a new version). Baselines: the same calls on an entry with a short history (the
  figures must not grow with the history: indexed, not replayed), and raw ``sqlite3`` on the same file (a primary
  key ``SELECT`` + ``json.loads`` for a read; for a rollback, the old snapshot's ``SELECT`` and one ``BEGIN
  IMMEDIATE`` / ``UPDATE`` / ``INSERT`` / ``COMMIT``). Target: p95 < 5 ms for the read and the rollback.
  ``--store postgresql://...`` runs it on ``PostgresStore`` instead, in a throwaway schema of that database
  (``?schema=onex_bench_<hex>``, created by the store's migrations, dropped at the end, also on failure), against raw
  ``asyncpg`` on the same schema: the same primary-key read + ``json.loads``, and a rollback as
  ``onex.metastore._sql_postgres`` writes one (the entity's row and the old snapshot read, then the conditional
  ``UPDATE`` and the version ``INSERT`` in one statement, a data-modifying CTE: one transaction).
- **http**: the gateway (``onex run --http`` in this process, every node on the memory bus, SQLite), loaded by
  ``bench/loadgen.py`` from a second process exactly as ``bench/http.py`` does (its ``_load`` is reused):
  ``POST /api/v1/feature-flags/evaluate`` of the same flag with a distinct ``user_id`` per request, at saturation
  and at a fixed 500 requests/s, and ``POST /api/v1/metadata-stamping/hash`` (1 KiB) the same two ways as the
  floor (HTTP, JSON, a hash, no workflow): what the HTTP layer alone costs on this machine, under the same load.
  Targets: p95 < 10 ms at 500 req/s, saturation >= 0.5 of /hash's.

A part whose pieces are missing (no metastore package, no metastore routes) prints why and is skipped.

    .venv/bin/python bench/metastore.py [--parts flags,history,http] [--versions 10000] [--duration 10] [--repeat 3]
                                        [--store postgresql://postgres@127.0.0.1:5432/test]

``run(**options) -> dict`` is the entry point for ``bench/run.py``; results go to ``bench/results/metastore.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from onex.metastore import Metastore

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for `bench.http` (its load helpers) when run as a script

RESULTS = ROOT / "bench" / "results"
PARTS = ("flags", "history", "http")
EVALS_TARGET = 200_000.0
RATIO_TARGET = 0.5
HISTORY_P95_TARGET_MS = 5.0
HTTP_P95_TARGET_MS = 10.0
HTTP_RATE = 500.0
SATURATION_RATIO_TARGET = 0.5

# --- part 1: in-process evaluation -------------------------------------------------------------------------------

FLAG: dict[str, Any] = {
    "name": "checkout.redesign",
    "enabled": True,
    "default_value": "classic",
    "variants": {"beta": "beta", "staff": "staff", "large": "large-text", "new": "redesign"},
    "rules": [
        {"conditions": ["country in [DE,AT,CH]", "plan equals enterprise"], "variant": "beta"},
        {"conditions": [r"email matches @example\.com$"], "variant": "staff"},
        {"conditions": ["age >= 70"], "variant": "large"},
    ],
    "rollout": {"percentage": 25, "stickiness": "user_id", "variant": "new"},
}
COUNTRIES = ("US", "DE", "FR", "AT", "GB", "CH", "ES", "IT", "NL", "PL")
PLANS = ("free", "pro", "team", "business", "enterprise")

_BETA = frozenset(("DE", "AT", "CH"))
_STAFF = re.compile(r"@example\.com$").search


def plain(context: Mapping[str, Any]) -> tuple[Any, str | None, str]:
    """The flag above written by hand: the same comparisons and the same hash, nothing else."""
    if context.get("country") in _BETA and context.get("plan") == "enterprise":
        return "beta", "beta", "TARGETING_MATCH"
    email = context.get("email")
    if email is not None and _STAFF(email):
        return "staff", "staff", "TARGETING_MATCH"
    age = context.get("age")
    if age is not None and age >= 70:
        return "large-text", "large", "TARGETING_MATCH"
    user = context.get("user_id")
    if not user:
        return "classic", None, "ERROR"
    if int.from_bytes(sha256(("checkout.redesign:" + user).encode()).digest()[:4], "big") % 10_000 < 2500:
        return "redesign", "new", "SPLIT"
    return "classic", None, "DEFAULT"


def contexts(count: int, *, rules: bool) -> list[dict[str, Any]]:
    """``count`` distinct users; ``rules=False``: none matches a rule (every context reaches the rollout)."""
    rng = random.Random(17)  # the same population every run
    made = []
    for i in range(count):
        country, plan = rng.choice(COUNTRIES), rng.choice(PLANS)
        domain = "example.com" if rules and rng.random() < 0.02 else "mail.test"
        age = rng.randint(18, 75) if rules else rng.randint(18, 69)
        if not rules and country in _BETA and plan == "enterprise":
            plan = "pro"
        made.append({"user_id": f"user-{i:06d}", "country": country, "plan": plan, "email": f"u{i}@{domain}",
                     "age": age})  # fmt: skip
    return made


def _rates(
    candidates: tuple[Callable[[Mapping[str, Any]], object], ...], population: list[dict[str, Any]], repeat: int
) -> list[float]:
    """Evaluations per second of each candidate: the best of ``repeat`` passes over the population, the candidates'
    passes interleaved, so a disturbance of the machine (other processes) hits both alike."""
    best = [float("inf")] * len(candidates)
    for _ in range(repeat):
        for index, evaluate in enumerate(candidates):
            start = time.perf_counter()
            for context in population:
                evaluate(context)
            best[index] = min(best[index], time.perf_counter() - start)
    return [len(population) / b for b in best]


def bench_flags(*, users: int = 10_000, repeat: int = 20) -> dict[str, Any]:
    from onex.metastore.flags import CompiledFlag, FlagSpec

    compiled = CompiledFlag(FlagSpec.model_validate(FLAG))
    evaluate = compiled.evaluate
    result: dict[str, Any] = {"flag": FLAG, "users": users, "repeat": repeat}
    for mix, with_rules in (("mixed", True), ("rollout", False)):
        population = contexts(users, rules=with_rules)
        reasons: Counter[str] = Counter()
        for context in population:  # the two agree on every context before anything is timed
            answer = evaluate(context)
            mine = (answer.value, answer.variant, answer.reason.value)
            if mine != plain(context):
                raise AssertionError(f"onex and plain disagree on {context}: {mine} != {plain(context)}")
            reasons[answer.reason.value] += 1
        _rates((evaluate, plain), population, 2)  # warm up
        onex_rate, plain_rate = _rates((evaluate, plain), population, repeat)
        ratio = onex_rate / plain_rate
        result[mix] = {
            "reasons": dict(sorted(reasons.items())),
            "onex_per_s": round(onex_rate),
            "plain_per_s": round(plain_rate),
            "onex_us": round(1e6 / onex_rate, 3),
            "plain_us": round(1e6 / plain_rate, 3),
            "ratio": round(ratio, 3),
            "per_s_met": onex_rate >= EVALS_TARGET,
            "ratio_met": ratio >= RATIO_TARGET,
        }
    result["targets"] = {"per_s": EVALS_TARGET, "ratio": RATIO_TARGET}
    return result


# --- part 2: version history ---------------------------------------------------------------------------------------


def _ms(samples: list[float]) -> dict[str, float]:
    """p50 (the median), p95 (nearest rank, ``loadgen.percentile``) and the largest of ``samples`` (s), in ms."""
    from bench.loadgen import percentile

    ms = sorted(s * 1000 for s in samples)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "max_ms": round(ms[-1], 3),
    }


async def _timed(samples: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    taken = []
    for i in range(samples):
        start = time.perf_counter()
        await call(i)
        taken.append(time.perf_counter() - start)
    return taken


def _raw_read(conn: sqlite3.Connection, id: str) -> dict[str, Any]:
    row = conn.execute("SELECT version, body FROM metastore_entities WHERE id = ?", (id,)).fetchone()
    body: dict[str, Any] = json.loads(row[1])
    return body


def _raw_rollback(conn: sqlite3.Connection, id: str, target: int) -> None:
    """A rollback with nothing around it: the old snapshot, the entity row replaced, a version row added."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current, kind, tenant = conn.execute(
            "SELECT version, kind, tenant FROM metastore_entities WHERE id = ?", (id,)
        ).fetchone()
        (snapshot,) = conn.execute(
            "SELECT snapshot FROM metastore_versions WHERE entity_id = ? AND version = ?", (id, target)
        ).fetchone()
        body = json.loads(snapshot)
        body["version"] = current + 1
        text = json.dumps(body, separators=(",", ":"))
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        conn.execute(
            "UPDATE metastore_entities SET version = ?, updated_at = ?, body = ? WHERE id = ? AND version = ?",
            (current + 1, now, text, id, current),
        )
        conn.execute(
            "INSERT INTO metastore_versions (entity_id, version, kind, tenant, at, actor, change, changed_fields,"
            " snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (id, current + 1, kind, tenant, now, "bench", "rollback", '["value"]', text),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# The conditional update and the version insert in one statement (one transaction, one round trip), as
# onex.metastore._sql_postgres writes a change of one version: the insert selects from the update's RETURNING.
_PG_ROLLBACK = (
    "WITH updated AS (UPDATE metastore_entities SET version = $1::bigint, updated_at = $2::timestamptz,"
    " body = $3::jsonb WHERE id = $4::uuid AND version = $5::bigint RETURNING id)"
    " INSERT INTO metastore_versions (entity_id, version, kind, tenant, at, actor, change, changed_fields, snapshot)"
    " SELECT $4::uuid, $1::bigint, $6::text, $7::text, $2::timestamptz, 'bench', 'rollback', '[\"value\"]'::jsonb,"
    " $3::jsonb FROM updated"
)


async def _raw_pg_read(conn: Any, id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT version, body FROM metastore_entities WHERE id = $1", id)
    body: dict[str, Any] = json.loads(row[1])  # asyncpg's default jsonb codec: text
    return body


async def _raw_pg_rollback(conn: Any, id: uuid.UUID, target: int) -> None:
    """What the metastore does on PostgreSQL with nothing around it: the entity's row and the old snapshot (two
    primary-key reads), then the conditional update and the version row in one statement."""
    current, kind, tenant = await conn.fetchrow(
        "SELECT version, kind, tenant FROM metastore_entities WHERE id = $1", id
    )
    snapshot = await conn.fetchval(
        "SELECT snapshot FROM metastore_versions WHERE entity_id = $1 AND version = $2", id, target
    )
    body = json.loads(snapshot)
    body["version"] = current + 1
    text = json.dumps(body, separators=(",", ":"))
    status = await conn.execute(_PG_ROLLBACK, current + 1, datetime.now(UTC), text, id, current, kind, tenant)
    if status != "INSERT 0 1":
        raise AssertionError(f"raw rollback of {id} to {target} wrote nothing ({status})")


async def _measure(
    ms: Metastore, versions: int, samples: int, rng: random.Random
) -> tuple[dict[str, Any], uuid.UUID, float]:
    """The history figures through ``ms`` (a ``Metastore``): per entity, and the long entity's id and build time."""
    from onex.metastore import Kind, MetadataCreate

    tenant, actor = "bench", "bench"
    long = await ms.create_metadata(tenant, MetadataCreate(key="long", value={"n": 0}), actor=actor)
    short = await ms.create_metadata(tenant, MetadataCreate(key="short", value={"n": 0}), actor=actor)
    started = time.perf_counter()
    written = 1
    while written < versions:  # bulk path, in transactions of up to 1,000 versions
        batch = [{"value": {"n": n}} for n in range(written, min(versions, written + 1000))]
        await ms.update_many(Kind.METADATA, tenant, long.id, batch, expected_version=None, actor=actor)
        written += len(batch)
    build_s = time.perf_counter() - started
    page = await ms.versions(Kind.METADATA, tenant, long.id, limit=1)
    if page.total != versions:
        raise AssertionError(f"history has {page.total} versions, {versions} expected")

    figures: dict[str, Any] = {}
    for name, entity_id, history in (("long", long.id, versions), ("short", short.id, 1)):

        async def get(i: int, entity_id: uuid.UUID = entity_id) -> object:
            return await ms.get(Kind.METADATA, tenant, entity_id)

        async def newest(i: int, entity_id: uuid.UUID = entity_id) -> object:
            return await ms.versions(Kind.METADATA, tenant, entity_id, limit=50)

        async def rollback(i: int, entity_id: uuid.UUID = entity_id, history: int = history) -> object:
            target = rng.randint(1, history + i)  # any version it has at that point
            return await ms.rollback(Kind.METADATA, tenant, entity_id, target, expected_version=None,
                                     actor=actor)  # fmt: skip

        await _timed(20, get)  # warm up (statement cache, page cache)
        figures[name] = {
            "versions_before": history,
            "get_latest": _ms(await _timed(samples, get)),
            "versions_newest_page": _ms(await _timed(samples, newest)),
            "rollback": _ms(await _timed(samples, rollback)),
        }
    total = (await ms.versions(Kind.METADATA, tenant, long.id, limit=1)).total
    if total != versions + samples:
        raise AssertionError(f"{total} versions after {samples} rollbacks of {versions}")
    return figures, long.id, build_s


async def _history_sqlite(versions: int, samples: int, rng: random.Random) -> tuple[dict[str, Any], float]:
    from onex._sqlite import PRAGMAS, SqliteStore
    from onex.metastore import Metastore
    from onex.settings import Settings

    with tempfile.TemporaryDirectory(prefix="onex-bench-metastore-") as tmp:
        settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp}/onex.db")
        async with SqliteStore(settings.store_url()) as store:
            await store.upgrade()
            async with Metastore(store, settings=settings) as ms:
                figures, long_id, build_s = await _measure(ms, versions, samples, rng)

        # Raw sqlite3 on the same file, after the store closed it (same pragmas, one connection of its own).
        conn = sqlite3.connect(f"{tmp}/onex.db", isolation_level=None)
        try:
            for pragma in PRAGMAS:
                conn.execute(pragma)
            id_text = str(long_id)
            for _ in range(20):
                _raw_read(conn, id_text)
            raw_read, raw_rollback = [], []
            for _ in range(samples):
                start = time.perf_counter()
                _raw_read(conn, id_text)
                raw_read.append(time.perf_counter() - start)
            for _ in range(samples):
                target = rng.randint(1, versions)
                start = time.perf_counter()
                _raw_rollback(conn, id_text, target)
                raw_rollback.append(time.perf_counter() - start)
            figures["raw_sqlite3"] = {"get_latest": _ms(raw_read), "rollback": _ms(raw_rollback)}
        finally:
            conn.close()
    return figures, build_s


async def _history_postgres(url: str, versions: int, samples: int, rng: random.Random) -> tuple[dict[str, Any], float]:
    """The same on PostgreSQL, in a throwaway schema of ``url``'s database (migrated, then dropped, also on
    failure); the raw baseline is one asyncpg connection of its own on that schema."""
    import asyncpg
    from onex._postgres import PostgresSettings, PostgresStore
    from onex.metastore import Metastore
    from onex.settings import Settings

    from bench.e2e import _drop_schema, _fresh_schema

    if "schema" in dict(parse_qsl(urlsplit(url).query)):
        raise ValueError("--store: give no ?schema= (the benchmark makes a throwaway one)")
    store_url = await _fresh_schema(url)  # migrated
    postgres = PostgresSettings.from_url(store_url)
    try:
        settings = Settings.load(environ={}, root=str(ROOT), store=store_url)
        async with PostgresStore(store_url) as store, Metastore(store, settings=settings) as ms:
            figures, long_id, build_s = await _measure(ms, versions, samples, rng)

        conn = await asyncpg.connect(postgres.dsn, server_settings={"search_path": postgres.schema})
        try:
            for _ in range(20):
                await _raw_pg_read(conn, long_id)
            raw_read, raw_rollback = [], []
            for _ in range(samples):
                start = time.perf_counter()
                await _raw_pg_read(conn, long_id)
                raw_read.append(time.perf_counter() - start)
            for _ in range(samples):
                target = rng.randint(1, versions)
                start = time.perf_counter()
                await _raw_pg_rollback(conn, long_id, target)
                raw_rollback.append(time.perf_counter() - start)
            figures["raw_asyncpg"] = {"get_latest": _ms(raw_read), "rollback": _ms(raw_rollback)}
        finally:
            await conn.close()
    finally:
        await _drop_schema(store_url)
    return figures, build_s


async def _history(versions: int, samples: int, store: str | None = None) -> dict[str, Any]:
    rng = random.Random(17)
    if store is None:
        figures, build_s = await _history_sqlite(versions, samples, rng)
        figures["store"], raw = "sqlite", "raw_sqlite3"
    else:
        figures, build_s = await _history_postgres(store, versions, samples, rng)
        figures["store"], raw = "postgresql", "raw_asyncpg"
    long_figures = figures["long"]
    figures["build_s"] = round(build_s, 2)
    figures["samples"] = samples
    figures["p95_target_ms"] = HISTORY_P95_TARGET_MS
    figures["p95_met"] = (
        long_figures["get_latest"]["p95_ms"] < HISTORY_P95_TARGET_MS
        and long_figures["rollback"]["p95_ms"] < HISTORY_P95_TARGET_MS
    )
    for op in ("get_latest", "rollback"):
        figures[f"{op}_long_vs_short_p50"] = round(long_figures[op]["p50_ms"] / figures["short"][op]["p50_ms"], 3)
        figures[f"{op}_vs_raw_p50"] = round(long_figures[op]["p50_ms"] / figures[raw][op]["p50_ms"], 3)
    return figures


def bench_history(*, versions: int = 10_000, samples: int = 200, store: str | None = None) -> dict[str, Any]:
    """``store``: None for a SQLite file in a temporary directory, or a ``postgresql://`` URL (a throwaway schema)."""
    return asyncio.run(_history(versions, samples, store))


# --- part 3: HTTP ----------------------------------------------------------------------------------------------------

EVALUATE = "/api/v1/feature-flags/evaluate"


def _evaluate_body() -> str:
    """The load generator's body template: ``{n}`` becomes the request's number (a distinct user each)."""
    context = {"user_id": "user-{n}", "country": "US", "plan": "pro", "email": "u{n}@mail.test", "age": 41}
    return json.dumps({"flag": FLAG["name"], "context": context}, separators=(",", ":"))


def _post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    answer: dict[str, Any] = json.loads(text)
    return status, answer


async def _http(duration: float, repeat: int, connections: int) -> dict[str, list[Any]] | str:
    from onex.http import PREFIX

    from bench.http import _load, gateway

    runs: dict[str, list[Any]] = {"fixed": [], "saturation": [], "floor": [], "floor_fixed": []}
    async with gateway("onex-bench-metastore-http-") as (url, settle, _):
        status, created = await asyncio.to_thread(_post, url, "/api/v1/feature-flags", FLAG)
        if status not in (200, 201):
            return f"POST /api/v1/feature-flags answered {status}: {created}"
        status, probe = await asyncio.to_thread(_post, url, EVALUATE, json.loads(_evaluate_body().replace("{n}", "1")))
        if status != 200:
            return f"POST {EVALUATE} answered {status}: {probe}"
        body, hash_ = _evaluate_body(), f"{PREFIX}/hash"
        await _load(url, path=EVALUATE, rate=0, duration=2, connections=connections, size=0, namespace="",
                    body=body)  # fmt: skip
        for _ in range(repeat):
            runs["saturation"].append(await _load(url, path=EVALUATE, rate=0, duration=duration,
                                                  connections=connections, size=0, namespace="",
                                                  body=body))  # fmt: skip
            runs["fixed"].append(await _load(url, path=EVALUATE, rate=HTTP_RATE, duration=duration,
                                             connections=32, size=0, namespace="", body=body))  # fmt: skip
            runs["floor"].append(await _load(url, path=hash_, rate=0, duration=duration / 2,
                                             connections=connections, size=1024, namespace=""))  # fmt: skip
            runs["floor_fixed"].append(await _load(url, path=hash_, rate=HTTP_RATE, duration=duration,
                                                   connections=32, size=1024, namespace=""))  # fmt: skip
            await settle()
    return runs


def bench_http(*, duration: float = 10.0, repeat: int = 3, connections: int = 64) -> dict[str, Any]:
    from bench.http import _median

    runs = asyncio.run(_http(duration, repeat, connections))
    if isinstance(runs, str):
        return {"skipped": runs}
    fixed, saturation, floor, floor_fixed = runs["fixed"], runs["saturation"], runs["floor"], runs["floor_fixed"]
    p95 = _median(fixed, "p95_ms")
    saturation_rps, floor_rps = _median(saturation, "rps"), _median(floor, "rps")
    ratio = saturation_rps / floor_rps if floor_rps else 0.0
    return {
        "fixed_rate": {
            "rate": HTTP_RATE,
            "achieved_rps": _median(fixed, "rps"),
            "p50_ms": _median(fixed, "p50_ms"),
            "p95_ms": p95,
            "p99_ms": _median(fixed, "p99_ms"),
            "p95_target_ms": HTTP_P95_TARGET_MS,
            "p95_met": p95 < HTTP_P95_TARGET_MS,
        },
        "saturation": {
            "connections": connections,
            "rps": saturation_rps,
            "p50_ms": _median(saturation, "p50_ms"),
            "p95_ms": _median(saturation, "p95_ms"),
        },
        "floor_hash": {"rps": floor_rps, "p50_ms": _median(floor, "p50_ms")},
        "floor_hash_fixed_rate": {
            "rate": HTTP_RATE,
            "achieved_rps": _median(floor_fixed, "rps"),
            "p50_ms": _median(floor_fixed, "p50_ms"),
            "p95_ms": _median(floor_fixed, "p95_ms"),
            "p99_ms": _median(floor_fixed, "p99_ms"),
        },
        "saturation_vs_hash_ratio": round(ratio, 3),
        "ratio_target": SATURATION_RATIO_TARGET,
        "ratio_met": ratio >= SATURATION_RATIO_TARGET,
        "errors": sum(r["errors"] for rs in runs.values() for r in rs),
        "duration_s": duration,
        "repeat": repeat,
        "runs": runs,
    }


# --- all parts -------------------------------------------------------------------------------------------------------


def _missing(part: str) -> str | None:
    """Why ``part`` cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("onex.metastore") is None:
        return "onex.metastore is not there"
    if part == "history":
        from onex import metastore

        if not all(hasattr(metastore, name) for name in ("Metastore", "Kind", "MetadataCreate")):
            return "onex.metastore has no Metastore / Kind / MetadataCreate yet"
    if part == "http":
        if importlib.util.find_spec("onex.http.metastore") is None:
            return "the gateway has no metastore routes (onex.http.metastore)"
        if not (ROOT / "contracts" / "effects" / "metastore_effect.yaml").is_file():
            return "the project has no metastore contract (contracts/effects/metastore_effect.yaml)"
    return None


def run(
    *,
    parts: tuple[str, ...] = PARTS,
    users: int = 10_000,
    versions: int = 10_000,
    samples: int = 200,
    duration: float = 10.0,
    repeat: int = 3,
    connections: int = 64,
    store: str | None = None,
) -> dict[str, Any]:
    from onex.runtime import tune_process

    tune_process()  # as `onex run` does
    result: dict[str, Any] = {"benchmark": "metastore"}
    for part in parts:
        why = _missing(part)
        if why is not None:
            print(f"{part}: skipped: {why}", flush=True)
            result[part] = {"skipped": why}
            continue
        print(f"{part}: running", flush=True)
        if part == "flags":
            result[part] = bench_flags(users=users)
        elif part == "history":
            result[part] = bench_history(versions=versions, samples=samples, store=store)
        else:
            result[part] = bench_http(duration=duration, repeat=repeat, connections=connections)
            if "skipped" in result[part]:
                print(f"{part}: skipped: {result[part]['skipped']}", flush=True)
    result["machine"] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # at the end: how busy the machine was
    }
    result["at"] = datetime.now(UTC).isoformat()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "metastore.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print(result: dict[str, Any]) -> None:
    from onex._render import console  # piped, every cell whole (a file of results must not read "1,442,8…")
    from rich.table import Table

    def met(flag: bool) -> str:
        return "yes" if flag else "NO"

    flags = result.get("flags", {})
    if "skipped" not in flags and flags:
        table = Table(title=f"flag evaluation in process, {flags['users']:,} users, best of {flags['repeat']}")
        for column in ("mix", "onex /s", "plain /s", "onex us", "plain us", "ratio", ">= 200k/s", ">= 0.5"):
            table.add_column(column, justify="left" if column == "mix" else "right")
        for mix in ("mixed", "rollout"):
            f = flags[mix]
            table.add_row(mix, f"{f['onex_per_s']:,}", f"{f['plain_per_s']:,}", f"{f['onex_us']:.2f}",
                          f"{f['plain_us']:.2f}", f"{f['ratio']:.2f}", met(f["per_s_met"]),
                          met(f["ratio_met"]))  # fmt: skip
        console.print(table)
        for mix in ("mixed", "rollout"):
            print(f"{mix}: " + ", ".join(f"{k} {v:,}" for k, v in flags[mix]["reasons"].items()))
    history = result.get("history", {})
    if "skipped" not in history and history:
        on, raw = ("PostgreSQL", "raw_asyncpg") if history.get("store") == "postgresql" else ("SQLite", "raw_sqlite3")
        table = Table(title=f"version history on {on}, {history['samples']} samples each")
        for column in ("entity", "get latest p50/p95", "newest page p50/p95", "rollback p50/p95", "max rollback"):
            table.add_column(column, justify="left" if column == "entity" else "right")
        for name, label in (
            ("long", f"{history['long']['versions_before']:,} versions"),
            ("short", f"short (1 + {history['samples']} rollbacks)"),
            (raw, f"{raw.replace('_', ' ')}, long"),
        ):
            h = history[name]
            page = h.get("versions_newest_page")
            table.add_row(label, f"{h['get_latest']['p50_ms']:.3f} / {h['get_latest']['p95_ms']:.3f} ms",
                          f"{page['p50_ms']:.3f} / {page['p95_ms']:.3f} ms" if page else "",
                          f"{h['rollback']['p50_ms']:.3f} / {h['rollback']['p95_ms']:.3f} ms",
                          f"{h['rollback']['max_ms']:.3f} ms")  # fmt: skip
        console.print(table)
        print(f"p95 < {history['p95_target_ms']:g} ms: {met(history['p95_met'])}; long/short p50: get "
              f"{history['get_latest_long_vs_short_p50']}, rollback {history['rollback_long_vs_short_p50']}; "
              f"vs raw p50: get {history['get_latest_vs_raw_p50']}, rollback {history['rollback_vs_raw_p50']}; "
              f"history of {history['long']['versions_before']:,} written in {history['build_s']} s")  # fmt: skip
    http = result.get("http", {})
    if "skipped" not in http and http:
        fixed, sat, floor = http["fixed_rate"], http["saturation"], http["floor_hash"]
        table = Table(title=f"POST {EVALUATE}, median of {http['repeat']} run(s) of {http['duration_s']:g} s")
        for column in ("run", "req/s", "p50 ms", "p95 ms", "target", "met"):
            table.add_column(column, justify="left" if column in ("run", "target") else "right")
        table.add_row(f"fixed {fixed['rate']:g} req/s", f"{fixed['achieved_rps']:,.0f}", f"{fixed['p50_ms']:.2f}",
                      f"{fixed['p95_ms']:.2f}", f"p95 < {fixed['p95_target_ms']:g} ms",
                      met(fixed["p95_met"]))  # fmt: skip
        table.add_row(f"saturation ({sat['connections']} conns)", f"{sat['rps']:,.0f}", f"{sat['p50_ms']:.2f}",
                      f"{sat['p95_ms']:.2f}", f">= {http['ratio_target']:g} of /hash",
                      met(http["ratio_met"]))  # fmt: skip
        floor_fixed = http["floor_hash_fixed_rate"]
        table.add_row(f"floor: POST /hash, fixed {floor_fixed['rate']:g} req/s", f"{floor_fixed['achieved_rps']:,.0f}",
                      f"{floor_fixed['p50_ms']:.2f}", f"{floor_fixed['p95_ms']:.2f}", "", "")  # fmt: skip
        table.add_row("floor: POST /hash, saturation", f"{floor['rps']:,.0f}", f"{floor['p50_ms']:.2f}", "", "", "")
        console.print(table)
        print(f"evaluate/hash saturation ratio {http['saturation_vs_hash_ratio']}; errors {http['errors']}; "
              f"{result['machine']['cpus']} CPU(s), load generator in a second process")  # fmt: skip
    print(f"load average at the end (1, 5, 15 min): {result['machine']['load_average_1_5_15']} "
          f"on {result['machine']['cpus']} CPU(s)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the metastore: flag evaluation, history, HTTP.")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--users", type=int, default=10_000, help="flags: distinct evaluation contexts")
    parser.add_argument("--versions", type=int, default=10_000, help="history: versions of the entity")
    parser.add_argument("--samples", type=int, default=200, help="history: timed calls per operation")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="history: postgresql://USER@HOST:PORT/DB (a throwaway schema in it); "
                        "default a SQLite file in a temporary directory")  # fmt: skip
    parser.add_argument("--duration", type=float, default=10.0, help="http: seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="http: runs of each kind")
    parser.add_argument("--connections", type=int, default=64, help="http: saturation connections")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
    if args.store is not None and not args.store.startswith(("postgresql:", "postgres:")):
        parser.error("--store: a postgresql:// URL (leave it out for SQLite in a temporary directory)")
    result = run(parts=parts, users=args.users, versions=args.versions, samples=args.samples,
                 duration=args.duration, repeat=args.repeat, connections=args.connections,
                 store=args.store)  # fmt: skip
    _print(result)
    return 0 if result.get("http", {}).get("errors", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
