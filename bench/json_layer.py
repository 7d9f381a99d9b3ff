"""JSON layer benchmark (not a test): `python -m bench.json_layer [--n N]`, about 20 seconds.

Why proxy/api/bodies.py declares its bodies with msgspec rather than pydantic v2: in one process, on
three real request bodies (POST /admin/orgs, a grant, PUT member), the time to turn the bytes into a
validated body, as a ratio to `orjson.loads` alone (parsing without validating):
- msgspec `Decoder.decode` (one pass: parse and validate), and `BodyReader.decode` (what the routes
  run: that, plus the declarations' Rules and the configured vocabularies);
- pydantic `model_validate_json` (strict models with the same constraints, extra fields forbidden).
Then encoding a 50-row listing of keys (GET /admin/keys), as a ratio to `orjson.dumps` of the store's
rows (what `json_response` does with them): msgspec encoding structs, `json_response`'s own path for
declared answers (orjson with structs turned to builtins), pydantic `dump_json` of models. Last, the
import time of each library in a fresh interpreter (the best of 5; every worker and CLI run pays it).
Each cell is the best of 5 rounds of `--n` calls. pydantic comes with the test extras (the OpenAI SDK).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from proxy.api import answers, bodies
from proxy.api.decode import BodyReader
from proxy.api.jsonapi import json_response

TIERS, LEVELS = ("free", "starter", "professional", "enterprise"), ("eco", "balanced", "precision")
TEXT = r"^\s*[^\s\x00][^\x00]*$"
STRICT = ConfigDict(strict=True, extra="forbid")


class CreateOrgModel(BaseModel):
    model_config = STRICT
    name: Annotated[str, Field(max_length=200, pattern=TEXT)]
    tier: Literal["free", "starter", "professional", "enterprise"]


class GrantModel(BaseModel):
    model_config = STRICT
    amount_millicredits: Annotated[int, Field(ge=1, le=bodies.MAX_AMOUNT)]
    reason: Annotated[str, Field(max_length=500, pattern=TEXT)]
    idempotency_key: Annotated[str, Field(max_length=200, pattern=TEXT)]
    expires_at: str | None = None


class PutMemberModel(BaseModel):
    model_config = STRICT
    role: Literal["member", "admin"] | None = None
    allocation_millicredits: Annotated[int, Field(ge=0, le=bodies.MAX_AMOUNT)] | None = None
    allocation_period: Literal["none", "day", "week", "month"] | None = None
    default: bool | None = None
    power_level: Literal["eco", "balanced", "precision"] | None = None
    suspended: bool | None = None


class KeyModel(BaseModel):
    id: str
    user_id: str
    org_id: str | None
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    revoked: bool


CASES: list[tuple[str, bytes, type[bodies.Body], type[BaseModel]]] = [
    ("POST /admin/orgs", b'{"name": "Acme Corporation", "tier": "starter"}', bodies.CreateOrg, CreateOrgModel),
    ("POST grants", b'{"amount_millicredits": 1000000, "reason": "Welcome credit", "idempotency_key": '
                    b'"welcome-acme", "expires_at": "2027-01-01T00:00:00Z"}', bodies.Grant, GrantModel),
    ("PUT member", b'{"role": "member", "allocation_millicredits": 50000, "allocation_period": "month", '
                   b'"default": false, "power_level": "balanced"}', bodies.PutMember, PutMemberModel),
]


def best(fn: Callable[[], object], n: int) -> float:
    """Seconds per call: the best of 5 rounds of `n` calls."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - started) / n)
    return min(rounds)


# the app imports these anyway before either library: only each library's own cost is counted
STDLIB = "import asyncio, dataclasses, datetime, decimal, enum, json, re, typing, uuid"
IMPORTS = {"orjson": "import orjson", "msgspec": "import msgspec.json, msgspec.structs",
           "pydantic": "from pydantic import BaseModel, TypeAdapter"}  # pydantic loads its models lazily


def import_ms(statement: str) -> float:
    """Milliseconds `statement` takes in a fresh interpreter that has the common standard library."""
    code = f"{STDLIB}; import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    runs = [subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
            for _ in range(5)]
    return min(float(out) for out in runs) * 1000


def rows(count: int) -> list[dict[str, Any]]:
    at = datetime(2026, 11, 2, tzinfo=UTC)
    return [{"id": f"key_{i:026d}", "user_id": f"usr_{i:026d}", "org_id": "org_01jcz8d9p3n6r8t1v4w7y0a2c5",
             "name": "laptop", "prefix": "sk-cg-4f2a", "created_at": at + timedelta(seconds=i),
             "revoked_at": None, "revoked": False} for i in range(count)]


def report(label: str, seconds: float, base: float) -> None:
    print(f"  {label:<44} {seconds * 1e6:8.3f} us  {seconds / base:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    n = parser.parse_args().n
    reader = BodyReader(tiers=TIERS, power_levels=LEVELS, providers=["openai"])
    for label, raw, struct, model in CASES:
        decoder = msgspec.json.Decoder(struct)
        assert reader.decode(raw, struct) == decoder.decode(raw) and model.model_validate_json(raw)
        base = best(lambda raw=raw: orjson.loads(raw), n)  # type: ignore[misc]
        print(f"decode + validate {label} ({len(raw)} bytes), ratio to orjson.loads:")
        report("orjson.loads (parse only)", base, base)
        report("msgspec Decoder.decode", best(lambda d=decoder, r=raw: d.decode(r), n), base)  # type: ignore[misc]
        report("BodyReader.decode (the routes' path)",
               best(lambda s=struct, r=raw: reader.decode(r, s), n), base)  # type: ignore[misc]
        report("pydantic model_validate_json", best(lambda m=model, r=raw: m.model_validate_json(r), n), base)  # type: ignore[misc]
    listing = rows(50)
    structs = [answers.ApiKey(**row) for row in listing]
    models = [KeyModel(**row) for row in listing]
    adapter = TypeAdapter(list[KeyModel])
    page = answers.Listing(data=structs, has_more=False)
    base = best(lambda: orjson.dumps({"data": listing, "has_more": False}, option=orjson.OPT_UTC_Z), n // 50)
    print("encode a 50-row listing of keys, ratio to orjson.dumps of the rows:")
    report("orjson.dumps (store rows, json_response)", base, base)
    report("msgspec.json.encode (structs)", best(lambda: msgspec.json.encode(page), n // 50), base)
    report("json_response (structs)", best(lambda: json_response(page), n // 50), base)
    report("pydantic TypeAdapter.dump_json (models)", best(lambda: adapter.dump_json(models), n // 50), base)
    print("import time in a fresh interpreter:")
    for name, statement in IMPORTS.items():
        print(f"  {name:<44} {import_ms(statement):8.1f} ms")


if __name__ == "__main__":
    main()
