"""The money. `types` holds what the hot path exchanges with the ledger (and the `Ledger` protocol),
`pg` the two-phase ledger on PostgreSQL, `batch` its group commit, `queries` the reads and the admin
writes (grants, adjustments), `tariffs` the exact charge formula, `sweeper` the expiry of holds and
grants, `verify` the invariant audit, `spool` the local file of settlements an unreachable database could
not take and `replay` their settling once it answers. Imports `config` and `db`.
"""
