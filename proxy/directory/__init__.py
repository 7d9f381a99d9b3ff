"""Who is who: orgs, users, memberships, API keys (hash only) and BYOK keys (sealed). `types` holds what
the hot path reads (and the `Directory` protocol), `pg` the PostgreSQL store with its SQL in `sql`,
`keycache` and `membership_cache` the hot path's caches, `crypto` the BYOK sealing, `apikeys` key
minting and hashing, `ids` the prefixed ids. Imports `config` and `db`.
"""
