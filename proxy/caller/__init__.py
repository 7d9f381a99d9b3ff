"""The caller's own endpoints with their API key (CONTRACT.md, Caller's own endpoints): `routes` mounts
them, `common` identifies the caller through the chain's first policies, `models`, `byok` (with the
one-token `probe`). Imports `api`, `config`, `directory`, `ledger` and `gateway`.
"""
