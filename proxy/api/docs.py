"""GET /docs: Swagger UI browsing /openapi.json, served from the `swagger-ui-bundle-v2` package (Swagger UI
5.x, which reads OpenAPI 3.1; the 4.x of `swagger-ui-bundle` cannot). Nothing comes from a CDN: the page
loads only the assets below, from this origin, and its own start-up script (no inline script).

Links are relative, so the page also works behind a path prefix. Only the files the page needs are
served, never the package's folder.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route
from swagger_ui_bundle import swagger_ui_path

ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript", "favicon-32x32.png": "image/png"}
CACHE = {"cache-control": "public, max-age=86400"}  # the package's pin changes them, and the app restarts
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>creditgate API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/start.js"></script>
</body>
</html>
"""
# the page runs only this origin's scripts; Swagger UI sets inline styles and draws icons as data: URLs
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
START = """window.ui = SwaggerUIBundle({url: %s, dom_id: "#swagger-ui", deepLinking: true});\n"""


def docs_routes(document: str) -> list[BaseRoute]:
    """GET /docs and its assets; `document` is the OpenAPI document's path (as a relative link)."""
    folder = Path(swagger_ui_path)
    page = PAGE.encode()
    start = (START % f'"{document.lstrip("/")}"').encode()
    headers = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}

    async def serve_page(request: Request) -> Response:
        return Response(page, media_type="text/html", headers={**headers, "content-security-policy": POLICY})

    async def serve_start(request: Request) -> Response:
        return Response(start, media_type="text/javascript", headers={**headers, **CACHE})

    def asset(name: str, media_type: str) -> Route:
        async def serve(request: Request) -> Response:
            return FileResponse(folder / name, media_type=media_type, headers={**headers, **CACHE})

        return Route(f"/docs/{name}", serve, methods=["GET"])

    return [Route("/docs", serve_page, methods=["GET"]), Route("/docs/start.js", serve_start, methods=["GET"]),
            *(asset(name, media_type) for name, media_type in ASSETS.items())]
