"""PostgreSQL: the pool, the translation of its failures into the contract's 503, and `migrate` with the
SQL files in `migrations/`. Imports `config`.
"""
