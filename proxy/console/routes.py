"""The /console web UI (issue 11) as Starlette routes: `console_routes()` is the only entry point.

Server-rendered pages for org admins (their own API key) and the operator (the admin token), on the
admin API's stores and rules. Every page answers HTML with the security headers of proxy/console/html.py;
a refusal is an HTML page with the admin API's status (400 for bad input, 403 for another org, 404 for an
unknown id, 503 while the database is unreachable), never a 500. A visitor without a valid session is
sent to the sign-in form (a post without one is 401). Posts are checked by proxy/console/forms.py (origin,
size, encoding) and carry the session's CSRF token; a change made by a form must also be allowed by the
signed-in key's scope for the admin API's route of that change (`may_write`). Any other method on a
/console path is an HTML 405 (with Allow) or 404 page, not the app's JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from proxy.admin.deps import AdminDirectory
from proxy.admin.exports import Alerts
from proxy.admin.input import path_id
from proxy.api.decode import BodyReader
from proxy.api.jsonapi import check_params, id_cursor
from proxy.api.jsonapi import page as paging
from proxy.api.stores import LedgerAdmin
from proxy.config.settings import Secret
from proxy.console import activity, keys, onboard, pages
from proxy.console import alerts as budget
from proxy.console.deps import ConsoleDeps
from proxy.console.forms import read_form
from proxy.console.guard import Guard, NotSignedIn, Visitor
from proxy.console.html import HEADERS, cell, error_page, esc, frame, link, page, redirect, table
from proxy.console.reads import ConsoleReads
from proxy.console.session import Sessions, clear_cookie_header, cookie_header
from proxy.console.signouts import PgSignOuts
from proxy.db.pool import Pool
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError

STATIC = Path(__file__).parent / "static"
View = Callable[[ConsoleDeps, str, Request], Awaitable[tuple[str, str]]]
OrgView = Callable[[Visitor, str, Request], Awaitable[tuple[str, str]]]
# a form's work: a path to redirect to (303), or a page (title, body, status)
Action = Callable[[Visitor, str, Request, dict[str, str]], Awaitable[str | tuple[str, str, int]]]
Endpoint = Callable[[Request], Awaitable[Response]]
LOGIN = ('<form method="post" action="/console/login" class="stack" id="login">'
         '<label>Admin token or your API key <input type="password" name="credential" id="f-credential" '
         'autocomplete="off" required></label><button type="submit">Sign in</button></form>'
         '<p class="note">Org admins sign in with their own API key; the operator with the admin token. '
         "Neither is stored in your browser: the session cookie only names who signed in.</p>")


def org_nav(org_id: str) -> list[tuple[str, str]]:
    base = f"/console/orgs/{org_id}"
    return [(base, "Overview"), (f"{base}/usage", "Usage"), (f"{base}/requests", "Requests"),
            (f"{base}/ledger", "Ledger"), (f"{base}/keys", "API keys"), (f"{base}/alerts", "Budget alerts")]


class Console:
    def __init__(self, deps: ConsoleDeps) -> None:
        self.d = deps
        self.css = (STATIC / "console.css").read_bytes()

    async def _guarded(self, request: Request, view: Callable[[Visitor], Awaitable[Response]]) -> Response:
        visitor: Visitor | None = None
        try:
            visitor = await self.d.guard.visitor(request)
            check_params(request)
            return await view(visitor)
        except NotSignedIn:
            if request.method in ("GET", "HEAD"):
                return redirect("/console/login")
            return error_page(401, "Sign in first.", code="not_signed_in")
        except ProxyError as exc:
            if visitor is None:
                return error_page(exc.status, exc.message, code=exc.code)
            return error_page(exc.status, exc.message, code=exc.code, who=visitor.label, csrf=visitor.csrf)

    def _page(self, visitor: Visitor, title: str, body: str, nav: list[tuple[str, str]] | None = None,
              status: int = 200) -> Response:
        links = nav if nav is not None else [("/console", "Organizations")] + (
            [("/console/onboard", "Onboard")] if visitor.caller.is_operator else [])
        return page(frame(title, body, who=visitor.label, csrf=visitor.csrf, nav=links), status)

    def org_view(self, view: View) -> Endpoint:
        return self.org_page(lambda visitor, org_id, request: view(self.d, org_id, request))

    def org_page(self, view: OrgView) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            async def show(visitor: Visitor) -> Response:
                org_id = path_id(request, "org", "org")
                await self.d.guard.org(visitor, org_id)
                title, body = await view(visitor, org_id, request)
                return self._page(visitor, title, body, [("/console", "Organizations"), *org_nav(org_id)])

            return await self._guarded(request, show)

        return endpoint

    def org_form(self, action: Action) -> Endpoint:
        """A form post on an org's page: the guard's check of the org, the form's origin and CSRF token."""
        async def endpoint(request: Request) -> Response:
            async def post(visitor: Visitor) -> Response:
                org_id = path_id(request, "org", "org")
                await self.d.guard.org(visitor, org_id)
                form = await read_form(request)
                self._csrf(visitor, form)
                done = await action(visitor, org_id, request, form)
                if isinstance(done, str):
                    return redirect(done)
                title, body, status = done
                return self._page(visitor, title, body, [("/console", "Organizations"), *org_nav(org_id)], status)

            return await self._guarded(request, post)

        return endpoint

    def _csrf(self, visitor: Visitor, form: dict[str, str]) -> None:
        if not self.d.guard.sessions.csrf_ok(visitor.session, form.get("csrf", "")):
            raise ProxyError.permission("csrf_failed", "This form has expired; reload the page and retry.")

    async def request_detail(self, request: Request) -> Response:
        async def show(visitor: Visitor) -> Response:
            org_id = path_id(request, "org", "org")
            await self.d.guard.org(visitor, org_id)
            title, body = await activity.request_detail(self.d, org_id, str(request.path_params["request_id"]))
            return self._page(visitor, title, body, [("/console", "Organizations"), *org_nav(org_id)])

        return await self._guarded(request, show)

    async def home(self, request: Request) -> Response:
        """The operator's list of every org (paged by id); an org admin's list of the orgs they administer."""
        async def show(visitor: Visitor) -> Response:
            if visitor.caller.is_operator:
                limit, after = paging(request.query_params, id_cursor("org"))
                rows, has_more = await self.d.directory.list_orgs(limit, after)
                more = (f'<p class="more">{link("/console", "Next →", after=str(rows[-1]["id"]), limit=str(limit))}</p>'
                        if has_more and rows else "")
                listing = table(["Organization", "Id", "Tier", "Suspended", "Created"], (
                    f'<td>{link("/console/orgs/" + o["id"], o["name"])}</td>{cell(o["id"])}{cell(o["tier"])}'
                    f'{cell("yes" if o["suspended"] else "no")}{cell(o["created_at"])}' for o in rows),
                    name="orgs", empty="No organizations yet.")
                return self._page(visitor, "Organizations", listing + more)
            orgs = [await self.d.directory.get_org(org_id) for org_id in await self.d.guard.admin_orgs(visitor.caller)]
            listing = table(["Organization", "Id", "Tier"], (
                f'<td>{link("/console/orgs/" + o["id"], o["name"])}</td>{cell(o["id"])}{cell(o["tier"])}'
                for o in orgs if o is not None), name="orgs", empty="You administer no organization.")
            return self._page(visitor, "Your organizations", listing)

        return await self._guarded(request, show)

    async def login_form(self, request: Request) -> Response:
        return page(frame("Sign in", LOGIN))

    async def login(self, request: Request) -> Response:
        try:
            form = await read_form(request)
            subject = await self.d.guard.sign_in(form.get("credential", ""))
        except ProxyError as exc:
            problem = f'<p class="error" id="error" data-code="{esc(exc.code)}">{esc(exc.message)}</p>'
            return page(frame("Sign in", problem + LOGIN), exc.status)
        _, value = self.d.guard.sessions.issue(subject)
        secure = request.url.scheme == "https"
        return redirect("/console", {"set-cookie": cookie_header(value, secure=secure)})

    async def logout(self, request: Request) -> Response:
        async def leave(visitor: Visitor) -> Response:
            self._csrf(visitor, await read_form(request))
            await self.d.guard.signouts.sign_out(visitor.session.nonce, visitor.session.expires)
            return redirect("/console/login",
                            {"set-cookie": clear_cookie_header(secure=request.url.scheme == "https")})

        return await self._guarded(request, leave)

    async def onboard_form(self, request: Request) -> Response:
        async def show(visitor: Visitor) -> Response:
            self._operator(visitor)
            return self._page(visitor, "Onboard an organization", onboard.form_page(self.d, visitor.csrf))

        return await self._guarded(request, show)

    async def onboard(self, request: Request) -> Response:
        async def create(visitor: Visitor) -> Response:
            self._operator(visitor)
            form = await read_form(request)
            self._csrf(visitor, form)
            try:
                plan = onboard.plan(self.d, form, self.d.now())
            except ProxyError as exc:
                kept = {k: v for k, v in form.items() if k != "csrf"}
                body = onboard.form_page(self.d, visitor.csrf, kept, exc.message)
                return self._page(visitor, "Onboard an organization", body, status=exc.status)
            outcome = await onboard.run(self.d, plan, visitor.caller.actor)
            status = outcome.error.status if outcome.error else 200 if outcome.replayed else 201
            return self._page(visitor, "Onboarding", onboard.result_page(outcome), status=status)

        return await self._guarded(request, create)

    @staticmethod
    def _operator(visitor: Visitor) -> None:
        if not visitor.caller.is_operator:
            raise ProxyError.permission("operator_only", "Only the operator may do this.")

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css", headers={
            "x-content-type-options": "nosniff", "cache-control": "public, max-age=3600",
            "content-security-policy": HEADERS["content-security-policy"]})


class OtherMethods:
    """Any method a /console path does not answer: an HTML 405 naming the methods it does (Allow), or the
    404 page for a path that is no page at all. Mounted last, as an ASGI app, so it matches every method."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = sorted({m for r in self._routes if r.methods and r.path_regex.match(scope["path"])
                          for m in r.methods})
        if allowed:
            answer = error_page(405, "This page does not answer this method.", code="method_not_allowed")
            answer.headers["allow"] = ", ".join(allowed)
        else:
            answer = error_page(404, "There is no such page.", code="page_not_found")
        await answer(scope, receive, send)


def console_routes(directory: AdminDirectory, ledger: LedgerAdmin, pool: Pool, *, admin_token: Secret,
                   lookup_key: Callable[[str], Awaitable[ApiKey | None]], tiers: Collection[str],
                   power_levels: Collection[str], alerts: Alerts, on_revoke: Callable[[str], Awaitable[None]],
                   now: Callable[[], datetime] | None = None) -> list[BaseRoute]:
    """The /console routes over the admin API's stores. `lookup_key` is the admin API's (the app's cached
    key lookup by hash); `pool` is what the console's own reads (proxy/console/reads.py) query; `alerts` is
    the admin API's budget alerts store and `on_revoke` its key broadcast (both as given to admin_routes)."""
    guard = Guard(Sessions(admin_token), admin_token, lookup_key, directory.memberships, PgSignOuts(pool))
    deps = ConsoleDeps(directory=directory, ledger=ledger, reads=ConsoleReads(pool), guard=guard,
                       bodies=BodyReader(tiers=tiers, power_levels=power_levels), tiers=tuple(tiers),
                       now=now or (lambda: datetime.now(UTC)), alerts=alerts, on_revoke=on_revoke)
    c = Console(deps)
    base = "/console/orgs/{org}"
    pages_ = [
        Route("/console", c.home, methods=["GET"]),
        Route("/console/login", c.login_form, methods=["GET"]),
        Route("/console/login", c.login, methods=["POST"]),
        Route("/console/logout", c.logout, methods=["POST"]),
        Route("/console/onboard", c.onboard_form, methods=["GET"]),
        Route("/console/onboard", c.onboard, methods=["POST"]),
        Route("/console/static/console.css", c.stylesheet, methods=["GET"]),
        Route(base, c.org_view(pages.overview), methods=["GET"]),
        Route(f"{base}/usage", c.org_view(pages.usage), methods=["GET"]),
        Route(f"{base}/requests", c.org_view(activity.requests), methods=["GET"]),
        Route(f"{base}/requests/{{request_id:path}}", c.request_detail, methods=["GET"]),
        Route(f"{base}/ledger", c.org_view(activity.ledger), methods=["GET"]),
        Route(f"{base}/keys", c.org_page(partial(keys.list_page, deps)), methods=["GET"]),
        Route(f"{base}/keys", c.org_form(partial(keys.create_post, deps)), methods=["POST"]),
        Route(f"{base}/keys/{{key}}", c.org_page(partial(keys.key_page, deps)), methods=["GET"]),
        Route(f"{base}/keys/{{key}}", c.org_form(partial(keys.change_post, deps)), methods=["POST"]),
        Route(f"{base}/keys/{{key}}/revoke", c.org_form(partial(keys.revoke_post, deps)), methods=["POST"]),
        Route(f"{base}/alerts", c.org_page(partial(budget.page, deps)), methods=["GET"]),
        Route(f"{base}/alert-thresholds", c.org_form(partial(budget.post, deps)), methods=["POST"]),
    ]
    others = OtherMethods(pages_)
    # last: any other page is a 404 page, any other method a 405 page
    return [*pages_, Route("/console", others), Route("/console/{rest:path}", others)]
