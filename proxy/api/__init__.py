"""The JSON API layer the caller's and the admin routes share: `jsonapi` (bounded bodies, answers, paging,
times, checked path and query values), `stores` (the store protocols the routes depend on), `openapi`
(the document at /openapi.json). Imports `config`, `directory` and `ledger`.
"""
