"""The operator's admin API (CONTRACT.md, "Operator's admin API"), as Starlette routes.

`admin_routes()` is the only entry point; the app mounts what it returns and renders `ProxyError`.
The operator authenticates with `Authorization: Bearer $CREDITGATE_ADMIN_TOKEN`; org admins with
their own API key on their own org's member, key, usage and ledger routes (see proxy/admin/auth.py).
Every change is recorded in `admin_audit` with its actor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from starlette.routing import BaseRoute, Route

from proxy.admin.auth import Authorizer
from proxy.admin.deps import AdminDeps, AdminDirectory
from proxy.admin.exports import Alerts, DeadLetters, ExportRoutes
from proxy.admin.orgs import OrgRoutes
from proxy.admin.people import PeopleRoutes
from proxy.admin.prices import PriceRoutes
from proxy.api.decode import BodyReader
from proxy.api.stores import LedgerAdmin
from proxy.config.settings import Secret
from proxy.directory.types import ApiKey


def admin_routes(
    directory: AdminDirectory,
    ledger: LedgerAdmin,
    *,
    admin_token: Secret,
    lookup_key: Callable[[str], Awaitable[ApiKey | None]],
    on_revoke: Callable[[str], Awaitable[None]],
    tiers: Collection[str],
    power_levels: Collection[str],
    dead_letters: DeadLetters | None = None,
    alerts: Alerts | None = None,
) -> list[BaseRoute]:
    """The /admin routes. `lookup_key` finds an API key by its SHA-256 hex hash (the app's cached
    lookup); `on_revoke` receives a revoked key's hash and must tell every replica within a second
    (if it raises, the DELETE answers 503 and may be retried: revoking is idempotent). With `dead_letters`
    and `alerts` (proxy/export/) the export's and budget alerts' routes are mounted too."""
    deps = AdminDeps(
        directory=directory,
        ledger=ledger,
        auth=Authorizer(admin_token, lookup_key, directory.memberships),
        on_revoke=on_revoke,
        bodies=BodyReader(tiers=tiers, power_levels=power_levels),
    )
    orgs, people, prices = OrgRoutes(deps), PeopleRoutes(deps), PriceRoutes(deps)
    exports: list[BaseRoute] = []
    if dead_letters is not None and alerts is not None:  # the export's stores (the app always gives them)
        ex = ExportRoutes(deps, dead_letters, alerts)
        exports = [
            Route("/admin/orgs/{org}/alerts", ex.alerts, methods=["GET"]),
            Route("/admin/orgs/{org}/alert-thresholds", ex.get_thresholds, methods=["GET"]),
            Route("/admin/orgs/{org}/alert-thresholds", ex.put_thresholds, methods=["PUT"]),
            Route("/admin/export/dead-letters", ex.dead_letters, methods=["GET"]),
            Route("/admin/export/dead-letters/{event}/retry", ex.retry, methods=["POST"]),
        ]
    return [
        *exports,
        Route("/admin/orgs", orgs.create, methods=["POST"]),
        Route("/admin/orgs", orgs.list_all, methods=["GET"]),
        Route("/admin/orgs/{org}", orgs.get, methods=["GET"]),
        Route("/admin/orgs/{org}", orgs.update, methods=["PATCH"]),
        Route("/admin/orgs/{org}/grants", orgs.grant, methods=["POST"]),
        Route("/admin/orgs/{org}/adjustments", orgs.adjust, methods=["POST"]),
        Route("/admin/orgs/{org}/usage", orgs.usage, methods=["GET"]),
        Route("/admin/orgs/{org}/usage.csv", orgs.usage_csv, methods=["GET"]),
        Route("/admin/orgs/{org}/ledger", orgs.ledger, methods=["GET"]),
        Route("/admin/orgs/{org}/audit", orgs.audit, methods=["GET"]),
        Route("/admin/audit", orgs.audit, methods=["GET"]),
        Route("/admin/orgs/{org}/members/{user}", people.get_member, methods=["GET"]),
        Route("/admin/orgs/{org}/members/{user}", people.put_member, methods=["PUT"]),
        Route("/admin/orgs/{org}/members/{user}", people.delete_member, methods=["DELETE"]),
        Route("/admin/users", people.create_user, methods=["POST"]),
        Route("/admin/users", people.list_users, methods=["GET"]),
        Route("/admin/keys", people.create_key, methods=["POST"]),
        Route("/admin/keys", people.list_keys, methods=["GET"]),
        Route("/admin/keys/{key}", people.update_key, methods=["PATCH"]),
        Route("/admin/keys/{key}", people.revoke_key, methods=["DELETE"]),
        Route("/admin/price-versions", prices.list_all, methods=["GET"]),
        Route("/admin/price-versions/{version}", prices.get, methods=["GET"]),
    ]
