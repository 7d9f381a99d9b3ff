"""bench.ledger_ab cuts the ledger_batch definition out of a migration and renames it, whatever else the file
holds (0008 drops the old function first and creates triggers before it)."""

from __future__ import annotations

from bench.ledger_ab import function_sql
from devstack import services

MIGRATIONS = services.ROOT / "proxy" / "db" / "migrations"


def test_the_definition_is_cut_out_and_renamed() -> None:
    for name in ("0008_scoped_keys.sql", "0011_lean_ledger.sql"):
        sql = function_sql(MIGRATIONS / name, "ledger_batch_a")
        assert sql.startswith("SET search_path = creditgate;\nCREATE OR REPLACE FUNCTION ledger_batch_a(\n"), name
        assert sql.endswith("END $$;") and sql.count("CREATE") == 1 and "TRIGGER" not in sql, name
        assert "ledger_batch(" not in sql, name
