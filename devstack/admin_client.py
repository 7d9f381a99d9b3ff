"""A thin client of the operator's admin API, for seeding `make run` and for end-to-end tests."""

from __future__ import annotations

import secrets
from typing import Any

import httpx


class AdminClient:
    def __init__(self, base_url: str, token: str) -> None:
        self._http = httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=30)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json() if response.content else None

    def org(self, name: str, tier: str = "starter") -> str:
        return str(self._call("POST", "/admin/orgs", {"name": name, "tier": tier})["id"])

    def user(self, email: str, name: str = "") -> str:
        return str(self._call("POST", "/admin/users", {"email": email, "name": name or email})["id"])

    def member(self, org_id: str, user_id: str, **fields: Any) -> dict[str, Any]:
        body = {"role": "member", "allocation_millicredits": None, "allocation_period": "none", "default": False,
                "power_level": None, **fields}
        return dict(self._call("PUT", f"/admin/orgs/{org_id}/members/{user_id}", body))

    def grant(self, org_id: str, amount: int, reason: str = "seed", key: str | None = None,
              expires_at: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"amount_millicredits": amount, "reason": reason,
                                "idempotency_key": key or secrets.token_hex(8)}
        if expires_at:
            body["expires_at"] = expires_at
        return dict(self._call("POST", f"/admin/orgs/{org_id}/grants", body))

    def key(self, user_id: str, org_id: str | None = None, name: str = "key", **scope: Any) -> tuple[str, str]:
        """A key (optionally scoped: models, routes, read_only, limit_millicredits, limit_period)."""
        body: dict[str, Any] = {"user_id": user_id, "name": name, **scope}
        if org_id:
            body["org_id"] = org_id
        created = self._call("POST", "/admin/keys", body)
        return str(created["id"]), str(created["key"])

    def patch_key(self, key_id: str, **changes: Any) -> dict[str, Any]:
        return dict(self._call("PATCH", f"/admin/keys/{key_id}", changes))

    def revoke(self, key_id: str) -> None:
        self._call("DELETE", f"/admin/keys/{key_id}")

    def patch_org(self, org_id: str, **changes: Any) -> dict[str, Any]:
        return dict(self._call("PATCH", f"/admin/orgs/{org_id}", changes))

    def get(self, path: str) -> Any:
        return self._call("GET", path)
