"""The schema stays ready to grow past one PostgreSQL (docs/scaling.md): read from the catalogue of a really
migrated database, every table is either distributed by org (Citus: `create_distributed_table(t, 'org_id')`)
or on the short list of reference tables below, each with its reason.

A distributed table carries `org_id NOT NULL`, and `org_id` is the first column of its primary key and of
every unique index (Citus can only enforce uniqueness that includes the distribution column; first, so one
org's rows are one index range). A foreign key between two distributed tables includes `org_id` on both
sides (colocated shards). Every function that writes a distributed table takes the org as `p_org` (its
`distribution_arg_name`) or is listed with the reason it does not, and no function or view joins two
distributed tables on anything but an `org_id` equality (a regex over their SQL: an approximation that
sees `JOIN ... ON/USING`, not comma joins or subqueries).

A table added without `org_id` fails the first test (the planted table below proves it). The schema met
these rules from migration 0010_distribution_keys.sql on (primary keys (org_id, id), foreign keys with the
org); a gap found later goes in PENDING with the change that closes it, and the test fails when a gap is
closed but still listed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from proxy.db.migrate import migrate

# Not distributed by org: replicated to every node (Citus reference tables) or kept on the coordinator.
REFERENCE = {
    "orgs": "the org itself, keyed by its id (the distribution value); one small row per org, read by reserve "
            "(suspended) and the admin API, written at admin speed",
    "users": "a person across orgs, looked up by id and email before any org is known",
    "memberships": "read by user before the org is resolved (default org, only org) and unique per user "
                   "(memberships_one_default); small, written at admin speed; reserve only reads it",
    "api_keys": "looked up by key hash before the org is known (a key may be bound to no org); small, written "
                "at admin speed; the money a key spends lives in key_usage, which is distributed",
    "admin_audit": "admin actions, some with no org (operator actions on users); written at admin speed",
    "price_versions": "global price tables, append-only, shared by every org's usage records",
    "schema_migrations": "the migration ledger of the coordinator",
    "clock_skew": "a singleton (tests skew the database clock)",
    "ledger_settings": "a singleton (the hold grace the audit allows)",
    "export_settings": "a singleton (the usage export's switch)",
    "console_signouts": "signed-out console sessions by nonce, checked before any org is known (the operator "
                        "has none); small, written at sign-out speed",
}

# Gaps of the schema as migrated: none since 0010_distribution_keys.sql (a gap found later is listed here
# with the change that closes it, until a migration ships it)
PENDING: dict[str, str] = {}

# Functions that write distributed tables without a `p_org` argument, and why.
UNKEYED_WRITERS = {
    "ledger_batch": "group commit: one call carries many orgs (r_org[], s_org[]); on Citus each flusher sends one "
                    "call per org (all items of one org), delegated by r_org[1] = s_org[1] (docs/scaling.md)",
    "expire_holds": "the sweeper, across orgs: on Citus, find the orgs with due holds (one multi-shard read), then "
                    "one delegated call per org",
    "expire_grants": "the grant sweeper, across orgs: split per org as expire_holds",
    "resolve_expired_credit": "a helper called inside ledger_batch and expire_holds for one hold of the org they "
                              "work on (same transaction, same shard); never called on its own",
    "create_pool": "trigger on orgs (a reference table): on Citus the org's pool row is inserted by the admin "
                   "call that creates the org (Citus runs no trigger from a reference table into a shard)",
}

# Joins between distributed tables on something other than org_id, and why they may stay. All are in the
# audit views `creditgate verify` reads, never on a request's path. A usage record and its hold are always of
# the same org (the invariant usage_record_belongs_to_its_hold), so on one PostgreSQL the join by hold id is
# exact; on Citus each must add `AND h.org_id = u.org_id` (or run as a repartition join).
_AUDIT = "audit view (creditgate verify): joins a usage record to its hold by hold id; add the org equality on Citus"
CROSS_JOINS = {
    "view overage_by_org: JOIN holds ON h.id = u.hold_id": _AUDIT,
    "view ledger_invariant_violations: JOIN holds ON h.id = u.hold_id": _AUDIT,
    "view ledger_invariant_violations: JOIN holds ON h.id = e.hold_id": _AUDIT,
    "view ledger_invariant_violations: JOIN usage_records ON u.hold_id = h.id": _AUDIT,
    "view ledger_invariant_violations: JOIN usage_records ON u.hold_id = e.hold_id": _AUDIT,
}

FUNCTION_WRITES = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(?:creditgate\.)?(\w+)", re.IGNORECASE)
JOIN = re.compile(
    r"\bJOIN\s+(?:LATERAL\s+)?(?:creditgate\.)?(\w+)(?:\s+(?:AS\s+)?(?!ON\b|USING\b)(\w+))?\s+(ON|USING)\s+"
    r"(.*?)(?=\bJOIN\b|\bLEFT\b|\bRIGHT\b|\bFULL\b|\bINNER\b|\bCROSS\b|\bWHERE\b|\bGROUP\b|\bORDER\b|\bUNION\b|"
    r"\bLIMIT\b|\bFOR\b|;|$)", re.IGNORECASE | re.DOTALL)
ORG_EQUALITY = re.compile(r"\w+\.org_id\s*=\s*\w+\.\w+|\w+\.\w+\s*=\s*\w+\.org_id|\w+\.org_id\s*=\s*\w+\.id",
                          re.IGNORECASE)
COMPARISON = re.compile(r"[\w.]+\s*=\s*[\w.]+")


@pytest.fixture
async def conn(fresh_db: str) -> AsyncIterator[asyncpg.Connection]:
    await migrate(fresh_db)
    connection = await asyncpg.connect(fresh_db)
    yield connection
    await connection.close()


async def tables(conn: asyncpg.Connection) -> list[str]:
    return [r["relname"] for r in await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'creditgate'::regnamespace AND relkind IN ('r', 'p') "
        "ORDER BY relname")]


async def key_violations(conn: asyncpg.Connection) -> set[str]:
    """What keeps the tables from being distributed by org_id (or from being colocated)."""
    found: set[str] = set()
    distributed = set(await tables(conn)) - set(REFERENCE)
    for table in sorted(distributed):
        org = await conn.fetchrow(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = ('creditgate.' || $1)::regclass "
            "AND attname = 'org_id' AND NOT attisdropped", table)
        if org is None:
            found.add(f"{table}: no org_id column")
        elif not org["attnotnull"]:
            found.add(f"{table}: org_id is nullable")
        indexes = await conn.fetch(
            """SELECT i.indisprimary AS primary, c.relname AS name,
                      array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(n, pos)
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.pos) AS cols
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = ('creditgate.' || $1)::regclass AND i.indisunique""", table)
        if not any(ix["primary"] for ix in indexes):
            found.add(f"{table}: no primary key")
        for ix in indexes:
            if list(ix["cols"][:1]) != ["org_id"]:
                what = "primary key" if ix["primary"] else f"unique index {ix['name']}"
                found.add(f"{table}: {what} ({', '.join(ix['cols'])}) does not start with org_id")
    for fk in await conn.fetch(
            """SELECT src.relname AS src, dst.relname AS dst,
                      array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, pos)
                             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.pos) AS cols,
                      array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, pos)
                             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.pos) AS refs
                 FROM pg_constraint c JOIN pg_class src ON src.oid = c.conrelid
                 JOIN pg_class dst ON dst.oid = c.confrelid
                WHERE c.contype = 'f' AND c.connamespace = 'creditgate'::regnamespace"""):
        cols, refs = list(fk["cols"]), list(fk["refs"])
        if fk["src"] in REFERENCE and fk["dst"] in distributed:
            found.add(f"{fk['src']}: foreign key ({', '.join(cols)}) from a reference table to {fk['dst']}")
        elif fk["src"] in distributed and fk["dst"] in distributed:
            org_ref = "id" if fk["dst"] in REFERENCE else "org_id"
            if "org_id" not in cols or refs[cols.index("org_id")] != org_ref:
                found.add(f"{fk['src']}: foreign key ({', '.join(cols)}) -> {fk['dst']} lacks org_id")
    return found


async def bodies(conn: asyncpg.Connection) -> dict[str, tuple[str, list[str], bool]]:
    """name -> (SQL body, argument names, is a trigger function) for every function of the schema."""
    return {r["proname"]: (r["prosrc"], list(r["proargnames"] or []), r["trigger"]) for r in await conn.fetch(
        "SELECT proname, prosrc, proargnames, prorettype = 'trigger'::regtype AS trigger FROM pg_proc "
        "WHERE pronamespace = 'creditgate'::regnamespace AND prokind = 'f'")}


async def unkeyed_writers(conn: asyncpg.Connection) -> set[str]:
    """Functions that write a distributed table but take no `p_org` (trigger functions act on their row's org)."""
    distributed = set(await tables(conn)) - set(REFERENCE)
    found = set()
    for name, (body, args, trigger) in (await bodies(conn)).items():
        writes = {t.lower() for t in FUNCTION_WRITES.findall(body)} & distributed
        if writes and "p_org" not in args and (not trigger or name in UNKEYED_WRITERS):
            found.add(name)
    return found


async def cross_joins(conn: asyncpg.Connection) -> set[str]:
    """`object: JOIN table ON ...` for every join of a distributed table, in a function or a view, whose
    condition has no org_id equality (a join with a non-table, unnest(...) or a subquery, is not checked)."""
    distributed = set(await tables(conn)) - set(REFERENCE)
    sources = {name: body for name, (body, _, _) in (await bodies(conn)).items()}
    for r in await conn.fetch("SELECT viewname, definition FROM pg_views WHERE schemaname = 'creditgate'"):
        sources[f"view {r['viewname']}"] = r["definition"]
    found = set()
    for name, sql in sources.items():
        sql = re.sub(r"--[^\n]*", "", sql)
        for table, _, kind, condition in JOIN.findall(sql):
            if table.lower() not in distributed:
                continue
            if kind.upper() == "USING":
                ok = "org_id" in re.findall(r"\w+", condition.split(")")[0])
            else:
                ok = bool(ORG_EQUALITY.search(condition))
            if not ok:
                first = COMPARISON.search(condition)
                found.add(f"{name}: JOIN {table} {kind.upper()} {first.group(0) if first else condition.strip()}")
    return found


async def test_every_table_is_distributed_by_org_or_a_listed_reference_table(conn: asyncpg.Connection) -> None:
    assert set(REFERENCE) <= set(await tables(conn)), "a reference table listed here no longer exists"
    assert await key_violations(conn) == set(PENDING)


async def test_a_money_table_without_org_id_is_caught(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE creditgate.refunds (id bigint PRIMARY KEY, request_id text UNIQUE, "
                       "amount bigint NOT NULL)")
    await conn.execute("""CREATE TABLE creditgate.payouts (org_id text, id bigint PRIMARY KEY, rid text,
                          FOREIGN KEY (org_id, rid) REFERENCES creditgate.usage_records (request_id, org_id))""")
    found = await key_violations(conn) - set(PENDING)
    assert found == {
        "refunds: no org_id column",
        "refunds: primary key (id) does not start with org_id",
        "refunds: unique index refunds_request_id_key (request_id) does not start with org_id",
        "payouts: org_id is nullable",
        "payouts: primary key (id) does not start with org_id",
        "payouts: foreign key (org_id, rid) -> usage_records lacks org_id",
    }


async def test_every_money_function_takes_the_org_or_says_why_not(conn: asyncpg.Connection) -> None:
    found = await unkeyed_writers(conn)
    assert found == set(UNKEYED_WRITERS)
    await conn.execute("""CREATE FUNCTION creditgate.refund(p_rid text, p_amount bigint) RETURNS void LANGUAGE sql AS
                          $$ UPDATE creditgate.pools SET granted = granted + p_amount WHERE org_id = p_rid $$""")
    assert await unkeyed_writers(conn) == {*UNKEYED_WRITERS, "refund"}


async def test_no_money_path_joins_two_distributed_tables_but_on_org_id(conn: asyncpg.Connection) -> None:
    assert await cross_joins(conn) == set(CROSS_JOINS)
    await conn.execute("""CREATE VIEW creditgate.by_hold AS SELECT u.charged FROM creditgate.usage_records u
                          JOIN creditgate.holds h ON h.id = u.hold_id""")
    assert await cross_joins(conn) == {*CROSS_JOINS, "view by_hold: JOIN holds ON h.id = u.hold_id"}
