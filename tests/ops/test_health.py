"""/healthz and /readyz: ready when every check answers in time; a check may report "degraded" (Redis)
without failing readiness; a failing or slow check makes it 503, names itself and says why in our own
words, logged once per change of state. The schema: an unmigrated or older database is not ready with
the command to run, every route that reads the database is 503 ledger_unavailable meanwhile, and the
replica becomes ready once migrated. The start-up checks: PostgreSQL unreachable is one line naming
the variable (after a bounded wait), Redis unreachable is a warning."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack import services
from proxy.config.settings import Secret, StartupError
from proxy.db.migrate import discover, migrate
from proxy.db.pool import Database
from proxy.ops.health import NotReady, Readiness, Schema, SchemaGate, healthz, preflight
from tests.gateway.conftest import make_settings

REQUEST = Request({"type": "http", "method": "GET", "path": "/readyz", "headers": [], "query_string": b""})


async def litellm() -> None:
    return None


async def redis() -> str:
    return "degraded"


async def postgres() -> None:
    raise ConnectionRefusedError("down, with postgresql://u:hunter2@db in the text")


async def slow() -> None:
    await asyncio.sleep(5)


async def draining() -> None:
    raise NotReady("shutting down")


async def test_ready_with_a_degraded_dependency() -> None:
    answer = await Readiness((litellm, redis)).endpoint(REQUEST)
    assert (answer.status_code, orjson.loads(answer.body)) == (
        200, {"status": "ready", "checks": {"litellm": "ok", "redis": "degraded"}})


async def test_a_failing_or_slow_check_makes_it_unavailable_and_says_why_in_our_words() -> None:
    answer = await Readiness((litellm, postgres, slow, draining), timeout=0.1).endpoint(REQUEST)
    assert (answer.status_code, orjson.loads(answer.body)) == (503, {
        "status": "unavailable",
        "checks": {"litellm": "ok", "postgres": "failed", "slow": "failed", "draining": "failed"},
        "details": {"postgres": "connection refused", "slow": "no answer within 0.1 s", "draining": "shutting down"}})
    assert b"hunter2" not in answer.body


async def test_a_change_of_state_is_logged_once_not_at_every_probe(caplog: pytest.LogCaptureFixture) -> None:
    state = {"up": False}

    async def flaky() -> None:
        if not state["up"]:
            raise ConnectionRefusedError

    readiness = Readiness((flaky,))
    with caplog.at_level(logging.INFO, logger="creditgate.health"):
        for up in (False, False, False, True, True, False):
            state["up"] = up
            await readiness.endpoint(REQUEST)
    assert [(r.levelname, r.getMessage(), getattr(r, "detail", None)) for r in caplog.records] == [
        ("WARNING", "readiness check failed", "connection refused"), ("INFO", "readiness check ok", None),
        ("WARNING", "readiness check failed", "connection refused")]


async def test_liveness_needs_nothing() -> None:
    answer = await healthz(REQUEST)
    assert (answer.status_code, orjson.loads(answer.body)) == (200, {"status": "ok"})


# ------------------------------------------------------------------ the schema


def first(n: int, directory: Path) -> Path:
    for m in discover()[:n]:
        (directory / m.name).write_text(m.sql)
    return directory


async def test_the_schema_check_names_what_was_found_what_is_expected_and_what_to_run(
        fresh_db: str, tmp_path: Path) -> None:
    names = [m.name for m in discover()]
    database = Database(fresh_db, max_size=2)
    await database.open()
    schema = Schema(database)
    try:
        with pytest.raises(NotReady) as never:
            await schema.schema()
        assert str(never.value) == f"schema not migrated, this release needs {names[-1]}: run `creditgate migrate`"
        await migrate(fresh_db, first(3, tmp_path))
        with pytest.raises(NotReady) as older:
            await schema.schema()
        assert str(older.value) == (f"schema at {names[2]}, this release needs {names[-1]} ({len(names) - 3} "
                                    "migration(s) pending): run `creditgate migrate`")
        assert schema.behind
        await migrate(fresh_db)
        assert (await schema.schema(), schema.behind) == (None, False)
        async with database.acquire() as conn:  # a newer release migrated it: still ready (rolling upgrade)
            await conn.execute("INSERT INTO creditgate.schema_migrations (name, checksum) "
                               "VALUES ('9999_next.sql', 'x')")
        assert await schema.schema() == "newer"
    finally:
        await database.close()


async def test_an_older_schema_is_503_on_every_database_route_until_migrated(fresh_db: str, tmp_path: Path) -> None:
    """The gate: health, metrics and the API description answer; everything else is the contract's 503
    until the watcher sees the migration, then the same request passes (the whole app: tests/test_cli.py)."""
    await migrate(fresh_db, first(2, tmp_path))
    database = Database(fresh_db, max_size=2)
    schema = Schema(database, recheck_seconds=0.1)

    async def orgs(_: Request) -> JSONResponse:
        return JSONResponse({"data": []})

    inner = Starlette(routes=[Route("/admin/orgs", orgs, methods=["GET", "POST"]), Route("/healthz", healthz),
                              Route("/metrics", healthz), Route("/docs/oauth2-redirect", healthz)])
    await database.open()
    await schema.open()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=SchemaGate(inner, schema)),
                                     base_url="http://gw") as http:
            for method, path in (("POST", "/admin/orgs"), ("GET", "/admin/orgs"), ("POST", "/v1/chat/completions"),
                                 ("GET", "/v1/credits")):
                answer = await http.request(method, path)
                assert (answer.status_code, answer.headers["content-type"], answer.json()) == (
                    503, "application/json", {"error": {"message": "The credit ledger is unavailable; retry later.",
                                                        "type": "service_unavailable", "param": None,
                                                        "code": "ledger_unavailable"}})
            assert [(await http.get(p)).status_code for p in ("/healthz", "/metrics", "/docs/oauth2-redirect")] == [
                200, 200, 200]
            await migrate(fresh_db)
            deadline = time.monotonic() + 10
            while (await http.get("/admin/orgs")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        await schema.close()
        await database.close()


# ------------------------------------------------------------------ start-up checks


async def test_preflight_gives_up_on_postgres_after_the_wait_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    port = services.free_port()
    settings = replace(make_settings("http://127.0.0.1:9"), startup_wait_seconds=0.6,
                       database_url=Secret(f"postgresql://cg:hunter2@127.0.0.1:{port}/x"))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="creditgate.health"), pytest.raises(StartupError) as failed:
        await preflight(settings)
    line = f"cannot reach PostgreSQL at CREDITGATE_DATABASE_URL (127.0.0.1:{port}): connection refused"
    assert str(failed.value) == line
    assert 0.5 < time.monotonic() - started < 5
    assert [r.getMessage() for r in caplog.records] == [
        f"{line}; waiting up to 0.6 s (CREDITGATE_STARTUP_WAIT_SECONDS)"]
    assert "hunter2" not in caplog.text


async def test_preflight_waits_for_a_postgres_that_comes_up_later_and_only_warns_about_redis(
        pg: services.Service, caplog: pytest.LogCaptureFixture) -> None:
    """A sidecar's PostgreSQL listening a moment after the gateway starts: `serve` waits for it."""
    port, redis_port = services.free_port(), services.free_port()
    target = int(pg.url.rsplit(":", 1)[1].split("/")[0])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    async def comes_up() -> asyncio.Server:
        await asyncio.sleep(0.7)
        return await asyncio.start_server(forward, "127.0.0.1", port)

    later = asyncio.ensure_future(comes_up())
    settings = replace(make_settings("http://127.0.0.1:9"), startup_wait_seconds=10.0,
                       database_url=Secret(pg.url.replace(f":{target}/", f":{port}/")),
                       redis_url=Secret(f"redis://:redispw@127.0.0.1:{redis_port}/0"))
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="creditgate.health"):
            await preflight(settings)
    finally:
        server = await later
        server.close()
    assert time.monotonic() - started > 0.7
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot reach PostgreSQL at CREDITGATE_DATABASE_URL (127.0.0.1:{port}): connection refused; waiting up "
        "to 10 s (CREDITGATE_STARTUP_WAIT_SECONDS)",
        f"cannot reach Redis at CREDITGATE_REDIS_URL (127.0.0.1:{redis_port}): connection refused; serving without "
        "it: API keys are read from PostgreSQL on every request and rate limits are not enforced "
        "(creditgate_ratelimit_unenforced_total) until it is back"]
    assert "redispw" not in caplog.text
