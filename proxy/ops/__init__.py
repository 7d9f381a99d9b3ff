"""What operators watch: `health` (/healthz, /readyz), `metrics` (/metrics, Prometheus), `logs` (JSON lines,
the access line). Imports `config` and `gateway.headers`.
"""
