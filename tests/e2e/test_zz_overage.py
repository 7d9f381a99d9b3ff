"""Overage is a defect, so it is zero: run last in the e2e folder, over everything the session's shared
gateway billed (the attacks of tests/e2e/test_trust_boundary.py and the allowlist fuzz included)."""

from __future__ import annotations

import asyncio

import httpx

from proxy.ledger.verify import audit
from tests.e2e.conftest import Gateway, make_member


def test_no_charge_of_the_session_exceeded_its_hold(gateway: Gateway) -> None:
    member = make_member(gateway)
    with member.http() as http:  # at least this one settles, whatever ran before
        assert http.post("/v1/chat/completions", json={
            "model": "fake-small", "messages": [{"role": "user", "content": "last"}]}).status_code == 200
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    overage = [line for line in metrics.splitlines() if line.startswith("creditgate_overage_millicredits_total")]
    assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in overage), overage
    posted = [line for line in metrics.splitlines()
              if line.startswith('creditgate_settlements_total{outcome="posted"}')]
    assert posted and float(posted[0].rsplit(" ", 1)[1]) >= 1
    report = asyncio.run(audit(gateway.env["CREDITGATE_DATABASE_URL"]))
    assert (report.violations, report.overage) == ([], [])
