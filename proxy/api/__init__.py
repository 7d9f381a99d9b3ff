"""The JSON API layer the caller's and the admin routes share: `jsonapi` (bounded bodies, answers, paging,
times, checked path and query values), `decode` (bodies read through their declarations), `bodies` and
`answers` (every request and answer body, declared once with msgspec), `examples`, `operations` (the route
table) and `openapi` (/openapi.json generated from them, browsed at /docs: `docs`), `stores` (the store
protocols the routes depend on). Imports `db` and `directory`.
"""
