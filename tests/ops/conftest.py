"""The gateway core with its test chain (tests/gateway/conftest.py), for the access line and /metrics."""

from tests.gateway.conftest import gateway, provider, start_gateway  # noqa: F401 - fixtures used here too
