"""GET /docs: a Swagger UI page from the pinned package, pointing at /openapi.json, loading only
same-origin assets that are served, and no script or style from anywhere else."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from starlette.applications import Starlette
from swagger_ui_bundle import swagger_ui_path

from proxy.api.docs import docs_routes
from proxy.api.openapi import openapi_routes

TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".png": "image/png"}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href") and value]
        self._in_script = tag == "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


async def test_the_page_loads_only_same_origin_assets_that_are_served() -> None:
    app = Starlette(routes=docs_routes("/openapi.json"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as http:
        page = await http.get("/docs")
        assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
        assert page.headers["x-content-type-options"] == "nosniff"
        links = Links()
        links.feed(page.text)
        assert links.inline_scripts == 0
        assert sorted(links.found) == ["docs/favicon-32x32.png", "docs/start.js", "docs/swagger-ui-bundle.js",
                                       "docs/swagger-ui.css"]
        for link in links.found:
            url = urljoin(str(page.url), link)
            assert urlsplit(url).netloc == "gw.test", url
            asset = await http.get(url)
            assert (asset.status_code, asset.headers["content-type"]) == (200, TYPES[Path(link).suffix]), link
            assert asset.content, link
        start = await http.get("/docs/start.js")
        assert 'url: "openapi.json"' in start.text and "SwaggerUIBundle(" in start.text
        assert urljoin(str(page.url), "openapi.json") == "http://gw.test/openapi.json"


async def test_the_assets_are_the_packages_own_files_and_nothing_else_is_served() -> None:
    app = Starlette(routes=docs_routes("/openapi.json"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as http:
        bundle = await http.get("/docs/swagger-ui-bundle.js")
        assert bundle.content == (Path(swagger_ui_path) / "swagger-ui-bundle.js").read_bytes()
        for other in ("/docs/index.html", "/docs/swagger-initializer.js", "/docs/../docs.py", "/docs/LICENSE"):
            assert (await http.get(other)).status_code == 404, other
    assert Path(swagger_ui_path).name.startswith("swagger-ui-5.")  # 5.x reads OpenAPI 3.1; 4.x refuses it


async def test_the_description_is_public_and_the_same_for_every_caller() -> None:
    """/openapi.json and /docs describe the interface, not anyone's data: every caller of the isolation
    matrix (nobody, a stranger, a member's key, the operator's token) gets the same bytes, and no query
    string or header changes them."""
    app = Starlette(routes=openapi_routes(tiers=("free", "starter"), power_levels=("eco",)))
    callers = [{}, {"authorization": "Bearer sk-cg-stranger"}, {"authorization": "Bearer sk-cg-member"},
               {"authorization": "Bearer operator-token"}, {"x-org-id": "org_a", "openai-organization": "org_b"}]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as http:
        for path in ("/openapi.json", "/docs", "/docs/start.js"):
            answers = [await http.get(path, headers=headers, params={"org": "org_a\x00"}) for headers in callers]
            assert {a.status_code for a in answers} == {200}
            assert len({a.content for a in answers}) == 1, path
