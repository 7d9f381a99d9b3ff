"""The operator's one-form onboarding: every field checked through the admin API's declarations before
anything is written, the five steps through the admin stores (audited as the operator), the key shown
once, an existing user reused, a step that fails naming itself and what was created before it, and the
same form sent twice (a refresh of the result page, a double click) creating nothing the second time."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.api.decode import BodyReader
from proxy.console.deps import ConsoleDeps
from proxy.console.onboard import millicredits, plan, result_page, run
from proxy.console.reads import ConsoleReads
from proxy.errors import ProxyError
from tests.admin.conftest import POWER_LEVELS, TIERS
from tests.admin.world import MEMBER_A, TOKEN

from .conftest import ORIGIN, ConsoleWorld

NOW = datetime(2026, 3, 10, tzinfo=UTC)
GOOD = {"org_name": "Newco", "tier": "starter", "grant_credits": "1,250.5", "grant_expires": "2027-01-01",
        "email": "Founder@Newco.test", "user_name": "Founder", "role": "admin", "allocation_credits": "10",
        "period": "month", "key_name": "laptop", "once": "t" * 32}


def deps(directory: Any = None, ledger: Any = None, pool: Any = None) -> ConsoleDeps:
    return ConsoleDeps(directory=directory, ledger=ledger, reads=ConsoleReads(pool), guard=None,  # type: ignore[arg-type]
                       bodies=BodyReader(tiers=TIERS, power_levels=POWER_LEVELS), tiers=TIERS, now=lambda: NOW,
                       alerts=None, on_revoke=None)  # type: ignore[arg-type]


def test_credits_to_millicredits() -> None:
    assert [millicredits(v, "x") for v in ("0", "12.5", "1,000", "0.001", "999999999999999")] == [
        0, 12_500, 1_000_000, 1, 999_999_999_999_999_000]
    for bad in ("", "0.0001", "-1", "1e3", "abc", "1_000", "NaN", "Infinity", " 1", "1.", ".5", "١٢"):
        with pytest.raises(ProxyError) as caught:
            millicredits(bad, "x")
        assert (caught.value.code, caught.value.param) == ("invalid_value", "x"), bad


def test_the_plan_checks_every_field_first() -> None:
    p = plan(deps(), GOOD, NOW)
    assert (p.org.name, p.org.tier, p.amount, p.expires_at, p.user.email, p.user.name) == (
        "Newco", "starter", 1_250_500, datetime(2027, 1, 1, tzinfo=UTC), "Founder@Newco.test", "Founder")
    assert (p.member.role, p.member.allocation_millicredits, p.member.allocation_period, p.key_name) == (
        "admin", 10_000, "month", "laptop")
    assert plan(deps(), {**GOOD, "allocation_credits": "", "grant_expires": "", "key_name": ""}, NOW).member.\
        allocation_millicredits is None
    for change, code, param in [
        ({"org_name": ""}, "missing_field", "org_name"), ({"tier": "gold"}, "invalid_value", "tier"),
        ({"grant_credits": "0"}, "invalid_value", "amount_millicredits"),
        ({"grant_credits": "x"}, "invalid_value", "grant_credits"),
        ({"grant_credits": "9" * 20}, "invalid_value", "grant_credits"),
        ({"grant_expires": "2026-03-10"}, "invalid_value", "grant_expires"),
        ({"grant_expires": "2026-02-30"}, "invalid_value", "grant_expires"),
        ({"email": "not-an-email"}, "invalid_value", "email"), ({"email": ""}, "missing_field", "email"),
        ({"role": "owner"}, "invalid_value", "role"), ({"period": "year"}, "invalid_value", "allocation_period"),
        ({"allocation_credits": "-5"}, "invalid_value", "allocation_credits"),
        ({"org_name": "x" * 201}, "invalid_value", "org_name"),
        ({"once": ""}, "invalid_value", "once"), ({"once": "short"}, "invalid_value", "once"),
        ({"once": "t" * 31 + "!"}, "invalid_value", "once"), ({"once": "t" * 65}, "invalid_value", "once"),
    ]:
        with pytest.raises(ProxyError) as caught:
            plan(deps(), {**GOOD, **change}, NOW)
        assert (caught.value.code, caught.value.param) == (code, param), change


def csrf(html: str, name: str = "csrf") -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def tokens(html: str) -> dict[str, str]:
    """The form's CSRF token and its one-time token."""
    return {"csrf": csrf(html), "once": csrf(html, "once")}


async def test_onboarding_creates_everything_audited_and_shows_the_key_once(console: ConsoleWorld) -> None:
    async with console.signed_in("operator") as http:
        form = tokens((await http.get("/console/onboard")).text)
        assert form["once"] != tokens((await http.get("/console/onboard")).text)["once"]  # one per form shown
        answer = await http.post("/console/onboard", data={**GOOD, "csrf": form["csrf"]}, headers=ORIGIN)
        assert answer.status_code == 201, answer.text
        key = re.search(r'<pre id="new-key">(sk-cg-[^<]+)</pre>', answer.text)
        org = re.search(r'href="/console/orgs/(org_[a-z0-9]+)"', answer.text)
        assert key is not None and org is not None
        assert key.group(1) not in str(answer.url) and answer.headers["cache-control"] == "no-store"
        assert key.group(1) not in (await http.get("/console/onboard")).text
    org_id = org.group(1)
    detail = await console.api("operator", f"/admin/orgs/{org_id}")
    assert (detail["name"], detail["tier"], detail["pool"]["granted"]) == ("Newco", "starter", 1_250_500)
    [member] = detail["members"]
    assert (member["email"], member["name"], member["role"], member["allocation_millicredits"],
            member["allocation_period"]) == ("founder@newco.test", "Founder", "admin", 10_000, "month")
    async with console.client() as api:  # the key is the new org admin's, bound to the new org
        own = await api.get(f"/admin/orgs/{org_id}", headers={"authorization": f"Bearer {key.group(1)}"})
        assert own.status_code == 200
    rows = await console.pool.fetch("SELECT actor, action, org_id FROM creditgate.admin_audit ORDER BY id")
    assert [(r["actor"], r["action"]) for r in rows if r["org_id"] == org_id or r["action"] == "user.create"] == [
        ("operator", "org.create"), ("operator", "console.onboard"), ("operator", "org.grant"),
        ("operator", "user.create"), ("operator", "member.put"), ("operator", "key.create")]
    grant = await console.pool.fetchrow("SELECT expires_at, idempotency_key FROM creditgate.grants WHERE org_id = $1",
                                        org_id)
    assert (grant["expires_at"], grant["idempotency_key"]) == (datetime(2027, 1, 1, tzinfo=UTC),
                                                               f"onboarding-{GOOD['once']}")


async def test_a_bad_field_redisplays_the_form_and_writes_nothing(console: ConsoleWorld) -> None:
    before = await console.pool.fetchval("SELECT count(*) FROM creditgate.orgs")
    async with console.signed_in("operator") as http:
        form = tokens((await http.get("/console/onboard")).text)
        answer = await http.post("/console/onboard", data={**GOOD, **form, "tier": "gold"}, headers=ORIGIN)
    assert answer.status_code == 400 and 'value="Newco"' in answer.text and "tier" in answer.text
    assert csrf(answer.text, "once") == form["once"]  # the redisplayed form is the same form
    assert await console.pool.fetchval("SELECT count(*) FROM creditgate.orgs") == before


async def test_an_existing_user_is_reused(console: ConsoleWorld) -> None:
    async with console.signed_in("operator") as http:
        answer = await http.post("/console/onboard", headers=ORIGIN, data={
            **GOOD, **tokens((await http.get("/console/onboard")).text), "email": f"{MEMBER_A}@lanes.test"})
    assert answer.status_code == 201 and "User (already existed, reused)" in answer.text
    assert await console.pool.fetchval("SELECT count(*) FROM creditgate.memberships WHERE user_id = $1", MEMBER_A) == 2


class FailingKeys:
    """The real directory, except that creating a key fails as an unreachable database would."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def create_key(self, *args: Any) -> Any:
        raise ProxyError.ledger_unavailable()


async def test_a_failing_step_says_which_and_what_was_created(console: ConsoleWorld) -> None:
    d = deps(FailingKeys(console.directory), console.ledger, console.pool)
    outcome = await run(d, plan(d, GOOD, NOW), "operator")
    assert outcome.failed_step == "creating the API key" and outcome.key is None
    assert outcome.error is not None and outcome.error.code == "ledger_unavailable"
    assert [what for what, _ in outcome.created] == ["Organization", "Grant", "User", "Member"]
    page = result_page(outcome)
    assert 'data-step="creating the API key"' in page and "new-key" not in page and TOKEN not in page


async def test_the_same_form_sent_again_creates_nothing_and_shows_the_first_ids(console: ConsoleWorld) -> None:
    orgs = "SELECT count(*) FROM creditgate.orgs"
    before = await console.pool.fetchval(orgs)
    async with console.signed_in("operator") as http:
        form = {**GOOD, **tokens((await http.get("/console/onboard")).text)}
        first = await http.post("/console/onboard", data=form, headers=ORIGIN)
        again = await http.post("/console/onboard", data=form, headers=ORIGIN)  # the browser's refresh
        fresh = {**form, **tokens((await http.get("/console/onboard")).text), "org_name": "Twice"}
        twice = await asyncio.gather(*(http.post("/console/onboard", data=fresh, headers=ORIGIN) for _ in range(3)))
    assert first.status_code == 201 and again.status_code == 200, again.text
    key = re.search(r'<pre id="new-key">(sk-cg-[^<]+)</pre>', first.text)
    org = re.search(r'href="/console/orgs/(org_[a-z0-9]+)"', first.text)
    assert key is not None and org is not None
    assert 'id="replayed"' in again.text and "new-key" not in again.text and key.group(1) not in again.text
    assert f"/console/orgs/{org.group(1)}" in again.text
    ids = re.findall(r"(?:usr|key)_[a-z0-9_]+", first.text)
    assert ids and all(i in again.text for i in ids)  # the user and the key, by id and prefix
    # a double click: the three posts take turns, the first runs, the others find it
    assert sorted(a.status_code for a in twice) == [200, 200, 201]
    made = {m.group(1) for a in twice if (m := re.search(r'href="/console/orgs/(org_[a-z0-9]+)"', a.text))}
    assert len(made) == 1 and made != {org.group(1)}
    assert await console.pool.fetchval(orgs) == before + 2
    for once in (form["once"], fresh["once"]):
        assert await console.pool.fetchval(
            "SELECT count(*) FROM creditgate.grants WHERE idempotency_key = $1", f"onboarding-{once}") == 1
