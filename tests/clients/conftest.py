"""Real clients (openai-node, LangChain's ChatOpenAI) against one `creditgate serve` in front of the real
LiteLLM 1.106.2 (the shipped config, whose fake-provider models answer /v1/responses through LiteLLM's
chat bridge) and the fake provider, with real PostgreSQL and Redis; shared by this folder's modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack import services
from tests.e2e.conftest import Gateway, start_gateway


@pytest.fixture(scope="package")
def gw(pg: services.Service, redis_server: services.Service, litellm: services.Service,
       fake_provider: services.Service) -> Iterator[Gateway]:
    gateway = start_gateway(pg, redis_server, litellm, fake_provider, name="clients")
    yield gateway
    gateway.stop()
