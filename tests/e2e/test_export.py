"""The usage export end to end: a `creditgate serve` process with CREDITGATE_EXPORT_URL pointing at a
deduplicating receiver (tests/export/receiver.py) that fails once, loses one acknowledgement and answers
the rest; every request the gateway billed arrives signed, counted exactly once, with the charge and
tokens GET /v1/requests/{id} shows; an adjustment arrives too; the metrics count the deliveries."""

from __future__ import annotations

import time
from typing import Any

import httpx

from devstack import services
from devstack.stack import gateway_env, migrate
from proxy.config.settings import Secret
from tests.e2e.conftest import make_member, start_gateway
from tests.export.receiver import Receiver, serving_in_thread

SECRET = "whsec-e2e-" + "x" * 24


def settled(member: Any, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = member.get(f"/v1/requests/{request_id}").json()
        if body["status"] != "pending":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_billed_requests_and_an_adjustment_reach_a_flaky_receiver_once_each(
        pg: services.Service, redis_server: services.Service, litellm: services.Service,
        fake_provider: services.Service) -> None:
    # a stall outlasts the timeout by far; a delivery that is merely slow on a busy machine stays within it
    receiver = Receiver(Secret(SECRET), {"e2e-fail": ["fail"], "e2e-stall": ["stall"]}, stall_seconds=5.0)
    with serving_in_thread(receiver):
        database = services.create_database(pg.url, "e2e_export")
        migrate(database)
        tmp = services.scratch("e2e-export-")
        config = services.render_litellm_config(fake_provider.url, tmp / "litellm_config.yaml")
        env = gateway_env(database, redis_server.url, litellm.url, litellm_config=config, extra={
            "CREDITGATE_SPOOL_DIR": str(tmp / "spool"), "CREDITGATE_UNREADY_GRACE_SECONDS": "0",
            "CREDITGATE_EXPORT_URL": receiver.url, "CREDITGATE_EXPORT_SECRET": SECRET,
            "CREDITGATE_EXPORT_TIMEOUT_SECONDS": "2", "CREDITGATE_EXPORT_BACKOFF_SECONDS": "0.05",
            "CREDITGATE_EXPORT_BACKOFF_MAX_SECONDS": "0.2"})
        gateway = start_gateway(pg, redis_server, litellm, fake_provider, name="e2e_export", env=env,
                                database_url=database)
        try:
            member = make_member(gateway, tier="starter")
            client = member.client()
            for rid in ("e2e-ok", "e2e-fail", "e2e-stall"):
                client.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": rid}],
                                               extra_headers={"X-Request-Id": rid})
            stream = client.chat.completions.create(model="fake-small", stream=True,
                                                    messages=[{"role": "user", "content": "stream"}],
                                                    extra_headers={"X-Request-Id": "e2e-stream"})
            for _ in stream:
                pass
            gateway.admin._call("POST", f"/admin/orgs/{member.org_id}/adjustments", {
                "amount_millicredits": 1_234, "reason": "refund", "idempotency_key": "e2e-refund"})
            rids = ("e2e-ok", "e2e-fail", "e2e-stall", "e2e-stream")
            records = {rid: settled(member, rid) for rid in rids}
            # a member whose allocation is twice the hold of the same request: holding it is 50 %
            held = records["e2e-ok"]["held_millicredits"]
            second = make_member(gateway, tier="starter", allocation=2 * held, period="day")
            second.client().chat.completions.create(
                model="fake-small", messages=[{"role": "user", "content": "e2e-ok"}],
                extra_headers={"X-Request-Id": "e2e-alert"})
            alerts = gateway.admin.get(f"/admin/orgs/{second.org_id}/alerts")["data"]
            deadline = time.monotonic() + 20
            while not {(member.org_id, rid) for rid in rids} <= set(receiver.kept) or not any(
                    e["code"] == "credit_adjustment" for e in receiver.kept.values()) or not any(
                    e["code"] == "budget_alert" for e in receiver.kept.values()) or receiver.attempts("e2e-stall") < 2:
                # the stalled delivery is kept at its first attempt (then it times out): wait for its retry too
                assert time.monotonic() < deadline, [d.transaction_id for d in receiver.deliveries]
                time.sleep(0.05)
            with httpx.Client(base_url=gateway.url, timeout=10) as http:
                metrics = http.get("/metrics").text
                dead = http.get("/admin/export/dead-letters",
                                headers={"authorization": f"Bearer {env['CREDITGATE_ADMIN_TOKEN']}"})
        finally:
            gateway.stop()
    for rid in rids:
        event, record = receiver.kept[(member.org_id, rid)], records[rid]
        assert event["code"] == "llm_usage" and event["external_subscription_id"] == member.org_id
        p = event["properties"]
        assert (p["charged_millicredits"], p["prompt_tokens"], p["completion_tokens"], p["usage_source"]) == (
            record["charged_millicredits"], record["prompt_tokens"], record["completion_tokens"],
            record["usage_source"])
        assert (p["model"], p["user_id"], p["key_id"], p["byok"], p["price_version"]) == (
            record["model"], member.user_id, member.key_id, False, record["price_version"])
    assert {rid: receiver.attempts(rid) for rid in rids} == {"e2e-ok": 1, "e2e-fail": 2, "e2e-stall": 2,
                                                           "e2e-stream": 1}
    assert all(d.signed and d.headers["idempotency-key"] == d.transaction_id for d in receiver.deliveries)
    (adjustment,) = [e for e in receiver.kept.values() if e["code"] == "credit_adjustment"]
    assert (adjustment["properties"]["amount_millicredits"], adjustment["properties"]["reason"]) == (1_234, "refund")
    assert [(a["scope"], a["user_id"], a["threshold"], a["used_millicredits"], a["budget_millicredits"])
            for a in alerts] == [("allocation", second.user_id, 50, held, 2 * held)]
    (alert,) = [e for e in receiver.kept.values() if e["code"] == "budget_alert"]
    assert alert["external_subscription_id"] == second.org_id and alert["transaction_id"] == f"alert#{alerts[0]['id']}"
    assert {k: alert["properties"][k] for k in ("scope", "user_id", "threshold_percent", "used_millicredits")} == {
        "scope": "allocation", "user_id": second.user_id, "threshold_percent": 50, "used_millicredits": held}
    assert (dead.status_code, dead.json()) == (200, {"data": [], "has_more": False})
    assert 'creditgate_export_events_total{outcome="retried"} 2.0' in metrics
    assert "receiver-token" not in metrics and SECRET not in metrics
