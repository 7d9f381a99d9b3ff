"""Session-wide real services on free loopback ports, started once and stopped by PID.

Area-specific fixtures live in each test folder's own conftest.py.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import services

ROOT = Path(__file__).resolve().parent.parent
_db_counter = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    """Every test session logs into its own folder, so log scans (tests/e2e/test_zz_secrets.py) read only
    what this session's processes wrote."""
    os.environ["CREDITGATE_LOG_DIR"] = tempfile.mkdtemp(prefix="creditgate-test-")


@pytest.fixture(scope="session")
def pg() -> Iterator[services.Service]:
    svc = services.start_postgres()
    yield svc
    svc.stop()


@pytest.fixture
def fresh_db(pg: services.Service) -> str:
    """A new empty database on the session's PostgreSQL; returns its DSN."""
    return services.create_database(pg.url, f"t{next(_db_counter)}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[services.Service]:
    svc = services.start_redis()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[services.Service]:
    svc = services.start_fake_provider()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def litellm(fake_provider: services.Service) -> Iterator[services.Service]:
    """A real LiteLLM 1.106.2 proxy in front of the fake provider, with the shipped config."""
    config = services.render_litellm_config(
        fake_provider.url, Path(tempfile.mkdtemp(prefix="creditgate-litellm-")) / "litellm_config.yaml"
    )
    svc = services.start_litellm(config)
    yield svc
    svc.stop()
