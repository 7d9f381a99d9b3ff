"""creditgate: a thin streaming billing gateway in front of LiteLLM.

The folders are the parts, lowest first; each may import only the folders above it in this list (and
`proxy/errors.py`, the one error type everyone raises, and `proxy/tasks.py`, the one holder of background
work):

- `config/`     settings from the environment, the policy file, the model catalogue from the LiteLLM config
- `db/`         the asyncpg pool, the one place PostgreSQL failures become errors, migrations
- `directory/`  orgs, users, memberships, API keys, BYOK keys: stores, caches, crypto, ids
- `ledger/`     the money: holds, settlements, group commit, tariffs, queries, sweeper, verify
- `gateway/`    the billed hot path: body, allowlist, upstream hop, stream tap, disconnects, token counts
- `ops/`        health and readiness, metrics, logs, tracing
- `export/`     the usage export (an outbox the ledger fills, delivered signed and retried) and budget alerts
- `api/`        the JSON layer the caller and admin APIs share, and the OpenAPI document
- `caller/`     the caller's own routes (credits, usage, requests, models, BYOK)
- `admin/`      the operator's and org admins' routes
- `console/`    the /console web UI for org admins and the operator, on the admin API's stores and rules
- `app.py`      the composition root (`create_app`); `cli.py` the `creditgate` command

`policies/` (the chain) sits between `gateway/` and the APIs: it uses config, directory, ledger, ops
hooks and the gateway's context; `proxy/` imports it only in `app.py`.
"""
