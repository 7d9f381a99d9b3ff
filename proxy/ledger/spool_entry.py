"""One spooled settlement as a line of the spool file (proxy/ledger/spool.py keeps the file).

**Format.** One JSON object per line, `\n`-terminated: `{"format": 1, "op": "settle"|"void", "org_id",
"request_id", "settlement": {every field of Settlement}, "spooled_at": RFC 3339, "context": {who, route,
hold, price inputs: for the audit}}`. Lines are kept as written, so fields a newer version adds (to
Settlement or beside it) ride along through compaction. A last line cut short by a crash is recovered
when it still parses, else left out: `append` returns only after its fsync, so it was never acknowledged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, get_args, get_type_hints
from urllib.parse import urlsplit

import orjson

from proxy.ledger.types import Settlement

FORMAT = 1
Key = tuple[str, str, str]  # (op, org_id, request_id)
_HINTS = get_type_hints(Settlement)


def ledger_id(dsn: str) -> str:
    """Which database a spool belongs to: the DSN's hosts, ports and database, hashed (never its user or
    password)."""
    parts = urlsplit(dsn)
    return hashlib.sha256((parts.netloc.rpartition("@")[2] + parts.path).encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Entry:
    """One spooled settlement (op "settle") or void (op "void"), and its line as stored."""

    op: str
    org_id: str
    request_id: str
    settlement: Settlement | None
    line: bytes

    @property
    def key(self) -> Key:
        return self.op, self.org_id, self.request_id

    @classmethod
    def of(cls, org_id: str, request_id: str, settlement: Settlement | None,
           context: Mapping[str, Any] | None = None) -> Entry:
        """A new entry: a settlement, or a void when `settlement` is None."""
        op = "void" if settlement is None else "settle"
        record = {"format": FORMAT, "op": op, "org_id": org_id, "request_id": request_id,
                  "settlement": None if settlement is None else asdict(settlement),
                  "spooled_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                  "context": dict(context or {})}
        return cls(op, org_id, request_id, settlement, orjson.dumps(record, default=_json_default) + b"\n")

    @classmethod
    def parse(cls, line: bytes) -> Entry:
        """The entry of a stored line (JSONDecodeError is a ValueError); ValueError when it is not one."""
        record = orjson.loads(line)
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("op") not in ("settle", "void"):
            raise ValueError("not a spool entry of this format")
        op, org_id, request_id, data = record["op"], record.get("org_id"), record.get("request_id"), record.get(
            "settlement")
        if not (isinstance(org_id, str) and org_id and isinstance(request_id, str) and request_id):
            raise ValueError("an entry needs an org and a request id")
        settlement = None
        if op == "settle":
            if not isinstance(data, dict):
                raise ValueError("a settle entry needs its settlement")
            settlement = _settlement(data)
        return cls(op, org_id, request_id, settlement, line if line.endswith(b"\n") else line + b"\n")


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")  # exact, and never in exponent notation ("6E-7")
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _settlement(data: Mapping[str, Any]) -> Settlement:
    """A Settlement from its stored fields, each checked against its declared type."""
    values: dict[str, Any] = {}
    for f in fields(Settlement):
        if f.name not in data:
            continue  # a field added later with a default keeps it; one without fails below
        kinds = tuple(k for k in get_args(_HINTS[f.name]) or (_HINTS[f.name],) if isinstance(k, type))
        value = data[f.name]
        if Decimal in kinds and isinstance(value, str):
            try:
                value = Decimal(value)
            except ArithmeticError as exc:
                raise ValueError(f"settlement field {f.name} is not a decimal") from exc
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"settlement field {f.name} has the wrong type")
        values[f.name] = value
    try:
        return Settlement(**values)
    except TypeError as exc:  # a required field is missing
        raise ValueError(str(exc)) from exc


def parse_lines(data: bytes) -> tuple[list[Entry], int]:
    """The entries of a spool file's bytes and the number of lines that are not entries. A last line
    without its newline (a write cut short) counts as an entry when it parses."""
    entries: list[Entry] = []
    bad = 0
    for line in data.split(b"\n"):
        if line.strip():
            try:
                entries.append(Entry.parse(line))
            except ValueError:
                bad += 1
    return entries, bad
