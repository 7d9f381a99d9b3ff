"""The composition root: parts open in order before serving and close in reverse at shutdown, a part that
fails to open closes those opened before it; a route given to create_app replaces the default one."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack import services
from proxy.app import Step, create_app
from proxy.config.settings import Secret
from proxy.console.session import Sessions
from proxy.gateway.context import RequestContext
from tests.gateway.conftest import ServerThread, chat, make_settings


def step(events: list[str], name: str, *, fail: bool = False) -> Step:
    async def open_() -> None:
        events.append(f"open {name}")
        if fail:
            raise RuntimeError(f"{name} cannot open")

    async def close() -> None:
        events.append(f"close {name}")

    return Step(open_, close)


def test_parts_open_in_order_close_in_reverse_and_a_route_replaces_the_default(litellm: services.Service) -> None:
    events: list[str] = []

    async def tag(ctx: RequestContext) -> None:
        ctx.response_headers["X-Chain"] = "tagged"

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "only-mine"}]})

    app = create_app(make_settings(litellm.url), policies=(tag,), parts=(step(events, "pool"), step(events, "redis")),
                     routes=[Route("/v1/models", models, methods=["GET"])])
    server = ServerThread(app).start()
    try:
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat(fake_chunks=1), timeout=30)
        listing = httpx.get(f"{server.url}/v1/models", timeout=30)
    finally:
        server.stop()
    assert answer.status_code == 200 and answer.headers["x-chain"] == "tagged"
    assert listing.json() == {"object": "list", "data": [{"id": "only-mine"}]}
    assert "x-request-id" in listing.headers
    assert events == ["open pool", "open redis", "close redis", "close pool"]


def test_a_part_that_fails_to_open_closes_what_opened_before_it(litellm: services.Service) -> None:
    """open_runtime used to leak the pool and the key-cache task when the token counter failed to warm."""
    events: list[str] = []
    app = create_app(make_settings(litellm.url), policies=(),
                     parts=(step(events, "pool"), step(events, "keys"), step(events, "warm", fail=True),
                            step(events, "never")))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match="warm cannot open"):
        asyncio.run(start())
    assert events == ["open pool", "open keys", "open warm", "close keys", "close pool"]


SAMPLE = {"org": "org_sample", "user": "usr_sample", "key": "key_sample", "provider": "openai",
          "request_id": "req_sample", "model_id": "fake-small"}


def concrete(path: str) -> str:
    """A path of the route table with a plausible value for each parameter (`{org}`, `{model_id:path}`)."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLE.get(m.group(1), "sample_1"), path)


def assert_console_page(method: str, path: str, answer: httpx.Response) -> None:
    """A console answer: an HTML page (the style sheet aside) or a redirect to sign in, never a 5xx but 503."""
    assert answer.status_code < 500 or answer.status_code == 503, (method, path, answer.text)
    if answer.status_code == 303:
        assert answer.headers["location"] in ("/console", "/console/login"), (method, path)
    elif path == "/console/static/console.css" and answer.status_code == 200:
        assert answer.headers["content-type"] == "text/css; charset=utf-8"
    else:
        assert answer.headers["content-type"] == "text/html; charset=utf-8", (method, path, answer.text)
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")


async def test_every_route_answers_the_contracts_json_before_the_lifespan_opened_anything(
        fernet_key: Secret) -> None:
    """The whole product's route table, with nothing opened (as before start-up completes or after shutdown):
    every method of every route, and one it does not allow, for the operator, a member's key and nobody.
    Every error is `{"error": {...}}` JSON with the request id: 503 ledger_unavailable where the database is
    needed, 502 where LiteLLM is, a 404 for a method a path does not serve; never a 500, never text/plain. The
    /console pages answer HTML (a redirect to sign in without a session, a 503 page where the database is needed)."""
    settings = make_settings("http://127.0.0.1:9", byok_keys=(fernet_key,))
    app = create_app(settings)
    # every route names its methods, but the console's last two, which answer any other method with a page
    catch_all = {r.path for r in app.routes if isinstance(r, Route) and not r.methods}
    routes = [r for r in app.routes if isinstance(r, Route) and r.methods]
    assert len(routes) > 40 and catch_all == {"/console", "/console/{rest:path}"}
    callers: tuple[dict[str, str], ...] = (
        {"authorization": "Bearer admin-token-for-core-tests"}, {"authorization": "Bearer sk-cg-member"}, {})
    seen: set[tuple[str, int, str | None]] = set()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        served: dict[str, set[str]] = {}
        for route in routes:
            served.setdefault(route.path, set()).update(route.methods or ())
        for template, methods in served.items():
            path = concrete(template)
            wrong = next(m for m in ("PATCH", "PUT", "DELETE", "POST", "GET") if m not in methods)
            for method in [*sorted(methods), wrong]:
                for headers in callers:
                    answer = await client.request(method, path, headers={**headers, "x-request-id": "rt-1"},
                                                  json={"model": "fake-small", "messages": []})
                    assert answer.headers.get("x-request-id") == "rt-1", (method, path)
                    if path.startswith("/console"):  # the web UI answers pages, never JSON (405 a page too)
                        assert_console_page(method, path, answer)
                        assert method != wrong or answer.status_code == 405, (method, path)
                        continue
                    if answer.status_code < 400 or method == "HEAD":
                        continue
                    assert answer.headers["content-type"] == "application/json", (method, path, answer.text)
                    if path == "/readyz" and method == "GET":  # its own answer: which check failed
                        assert answer.json()["status"] == "unavailable"
                        continue
                    error = answer.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"}, (method, path)
                    assert answer.status_code in (400, 401, 403, 404, 410, 413, 502, 503), (method, path, answer.text)
                    seen.add((method if method == wrong else "ok", answer.status_code, error["code"]))
        # the console with an operator's session: what needs the database is a 503 page, nothing is a 500
        _, session = Sessions(settings.admin_token).issue("operator")
        pages = {template: methods for template, methods in served.items() if template.startswith("/console")}
        statuses = set()
        for template, methods in pages.items():
            for method in sorted(methods):
                answer = await client.request(method, concrete(template), data={"csrf": "x"},
                                              headers={"origin": "http://gw", "cookie": f"cg_console={session}"})
                assert_console_page(method, template, answer)
                statuses.add(answer.status_code)
        # a session is checked against the sign-outs in PostgreSQL before anything else (fail closed): with the
        # database closed, every page and form behind one is the 503 page, a forged CSRF token included
        assert len(pages) == 15 and statuses == {200, 401, 503}
        for method, path, status in (("GET", "/console/nowhere", 404), ("BREW", "/console/nowhere", 404),
                                     ("BREW", "/console", 405), ("DELETE", "/console/login", 405)):
            answer = await client.request(method, path, headers={"cookie": f"cg_console={session}"})
            assert answer.status_code == status, (method, path)
            assert_console_page(method, path, answer)
    codes = {(status, code) for _, status, code in seen}
    assert {(503, "ledger_unavailable"), (401, "invalid_api_key"), (404, "route_not_found")} <= codes
    assert {(status, code) for m, status, code in seen if m != "ok"} == {(404, "route_not_found")}
