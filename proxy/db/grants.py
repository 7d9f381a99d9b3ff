"""What the gateway's runtime database role may do: read and write rows, nothing else.

`creditgate migrate --grant ROLE` runs `grant_runtime` after migrating, as the owner that ran the
migrations. The runtime role then needs no DDL: the gateway never creates, alters or drops anything at run
time (no temporary tables either). What it gets, in schema `creditgate` only:

- USAGE on the schema (never CREATE) and CONNECT on the database;
- SELECT, INSERT, UPDATE, DELETE on every table and view (the append-only tables refuse updates and
  deletes by trigger whatever the grant), but only SELECT on `schema_migrations` (readiness reads it, only
  `migrate` writes it);
- USAGE on every sequence, EXECUTE on every function (the ledger's money operations);
- the same on what later migrations create (default privileges of the owner that runs `migrate`, so run
  every migration as that same owner).
"""

from __future__ import annotations

import asyncpg

from proxy.config.settings import ConfigError

SCHEMA = "creditgate"


def _statements(role: str, database: str) -> list[str]:
    """The grants, with `role` and `database` already quoted as identifiers."""
    s = SCHEMA
    return [
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA {s} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {role}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {s}.schema_migrations FROM {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {role}",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE ON SEQUENCES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT EXECUTE ON FUNCTIONS TO {role}",
    ]


async def grant_runtime(dsn: str, role: str) -> None:
    """Grant `role` (an existing role other than the one connecting) what the gateway needs at run time,
    in one transaction. A missing role, or the owner itself, is a `ConfigError` naming it."""
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchrow(
            "SELECT quote_ident(rolname) AS quoted, rolname = current_user AS is_owner, "
            "quote_ident(current_database()) AS database FROM pg_roles WHERE rolname = $1", role)
        if found is None:
            raise ConfigError(f"--grant {role}: no such database role (create it first: CREATE ROLE ... LOGIN)")
        if found["is_owner"]:
            raise ConfigError(f"--grant {role}: that is the role running migrate; grant a separate runtime role")
        async with conn.transaction():
            for statement in _statements(found["quoted"], found["database"]):
                await conn.execute(statement)
    finally:
        await conn.close()
