"""The route table behind /openapi.json matches what the app mounts, both ways: every caller and admin
route (and every billed route) has its operation, and every operation is a mounted route."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.fernet import Fernet
from starlette.routing import Route

from proxy.admin.routes import admin_routes
from proxy.api import answers, bodies
from proxy.api.operations import CLIENT, OPERATIONS, PATH_PARAMS
from proxy.app import BILLED_ROUTES
from proxy.caller.routes import caller_routes
from proxy.config.catalogue import load_catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.policy import load_policy
from proxy.config.settings import Secret
from proxy.directory.crypto import KeyBox
from tests.admin.conftest import POWER_LEVELS, TIERS

ROOT = Path(__file__).resolve().parents[2]


def mounted() -> set[tuple[str, str]]:
    """(method, path) of every caller and admin route, `/api/v1/llm` read as `/v1`, converters dropped.
    Building the routes does no I/O, so stand-ins for the stores are enough."""
    unused: Any = SimpleNamespace(memberships=None)
    routes = [
        *caller_routes(identify=unused, ledger=unused, directory=unused,
                       config=LiveConfig(Snapshot.of(load_policy(ROOT / "policy.yaml"),
                                                     load_catalogue(ROOT / "litellm_config.yaml"))),
                       keybox=KeyBox([Secret(Fernet.generate_key().decode())]), probe=unused, created=0),
        *admin_routes(unused, unused, admin_token=Secret("t" * 32), lookup_key=unused, on_revoke=unused,
                      tiers=TIERS, power_levels=POWER_LEVELS, dead_letters=unused, alerts=unused),
    ]
    found = set()
    for route in routes:
        assert isinstance(route, Route)
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path.replace("/api/v1/llm/", "/v1/", 1))
        found |= {(method, path) for method in route.methods or () if method != "HEAD"}
    return found


def test_every_mounted_caller_and_admin_route_has_its_operation_and_no_other() -> None:
    documented = {(op.method, op.path) for op in OPERATIONS if op not in CLIENT}
    assert documented == mounted()
    assert len(mounted()) == 36 + 5 + 1  # + the export's and budget alerts' five, + PATCH /admin/keys/{key}


def test_every_billed_route_is_documented() -> None:
    assert {op.path for op in CLIENT} == {f"/v1/{route}" for route in BILLED_ROUTES}
    assert {op.method for op in CLIENT} == {"POST"}


def test_operation_ids_are_unique_camel_case_and_paths_use_known_parameters() -> None:
    ids = [op.operation_id for op in OPERATIONS]
    assert len(ids) == len(set(ids)) == len(OPERATIONS)
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", op_id) for op_id in ids), ids
    for op in OPERATIONS:
        assert set(re.findall(r"{(\w+)}", op.path)) <= set(PATH_PARAMS), op.path


def test_bodies_and_answers_are_declared_structs() -> None:
    requests = {op.body for op in OPERATIONS if op.body is not None and op not in CLIENT}
    assert requests == {bodies.CreateOrg, bodies.PatchOrg, bodies.Grant, bodies.Adjustment, bodies.CreateUser,
                        bodies.PutMember, bodies.CreateKey, bodies.PatchKey, bodies.PutProviderKey,
                        bodies.ToggleProviderKey, bodies.PutAlertThresholds}
    for op in OPERATIONS:
        assert op.answers, op.operation_id
        if op not in CLIENT and op.media == "application/json":  # the CSV downloads are text, described
            assert all(not isinstance(answer, dict) for answer in op.answers.values()), op.operation_id
    assert {op.operation_id for op in OPERATIONS if op.media != "application/json"} == {
        "downloadOrgUsage", "downloadUsage"}
    purchase = next(op for op in OPERATIONS if op.operation_id == "purchaseCredits")
    assert purchase.answers == {410: answers.Error}


def test_who_may_call_follows_the_contract() -> None:
    access = {op.operation_id: op.access for op in OPERATIONS}
    operator_only = {"createOrg", "listOrgs", "updateOrg", "grantCredits", "adjustCredits", "listAudit", "createUser",
                     "listUsers", "listPriceVersions", "getPriceVersion", "listDeadLetters", "retryDeadLetter"}
    assert {op_id for op_id, who in access.items() if who == "operator"} == operator_only
    assert {op.operation_id for op in OPERATIONS if op.path.startswith("/admin/")} - operator_only == {
        op_id for op_id, who in access.items() if who == "org_admin"}
    assert {access[op.operation_id] for op in OPERATIONS if op.path.startswith("/v1/")} == {"api_key"}
