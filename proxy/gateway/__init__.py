"""The billed hot path, from client request to LiteLLM and back: `passthrough` (the raw ASGI endpoint),
`context` (the per-request context policies fill in), `body` (bounded read, parse, the non-stream
answer), `params` (the body allowlist), `upstream` and `upstream_errors` (the hop and its one error
translation), `sse` (the stream tap), `headers`, `watch` (client disconnects), `tokens` (offline
counting). Imports `config`, `ops` hooks, and the `types` of `directory` and `ledger`; never `policies/`.
"""
