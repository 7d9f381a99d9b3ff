"""Session-wide real services on free loopback ports, started once and stopped by PID.

Area-specific fixtures live in each test folder's own conftest.py.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet

from devstack import services
from proxy.config.catalogue import Catalogue, load_catalogue
from proxy.config.policy import PolicyConfig, load_policy
from proxy.config.settings import Secret
from proxy.db.migrate import migrate
from proxy.directory.crypto import KeyBox
from proxy.directory.pg import PgDirectory
from proxy.gateway.tokens import TokenCounter

ROOT = Path(__file__).resolve().parent.parent
_db_counter = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def _session_run_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session keeps its logs and scratch folders (devstack.services.run_dir) in its own folder
    under pytest's temporary directory, which pytest prunes: log scans (tests/e2e/test_zz_secrets.py) read
    only what this session's processes wrote, and nothing is left loose in the system's temporary directory."""
    os.environ["CREDITGATE_RUN_DIR"] = str(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def pg() -> Iterator[services.Service]:
    svc = services.start_postgres()
    yield svc
    svc.stop()


@pytest.fixture
def fresh_db(pg: services.Service) -> str:
    """A new empty database on the session's PostgreSQL; returns its DSN."""
    return services.create_database(pg.url, f"t{next(_db_counter)}")


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on a fresh, migrated database (tests/caller has its own, from a seeded template)."""
    await migrate(fresh_db)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
def directory(pool: asyncpg.Pool) -> PgDirectory:
    """The PostgreSQL directory on `pool` (tests/policies has an in-memory one of the same name)."""
    return PgDirectory(pool)


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
    config = services.render_litellm_config(fake_provider.url, services.scratch("litellm-") / "litellm_config.yaml")
    svc = services.start_litellm(config)
    yield svc
    svc.stop()


# the shipped configuration files and a BYOK key box, for the unit tests of every folder
@pytest.fixture(scope="session")
def policy() -> PolicyConfig:
    return load_policy(ROOT / "policy.yaml")


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue(ROOT / "litellm_config.yaml")


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.fixture(scope="session")
def fernet_key() -> Secret:
    return Secret(Fernet.generate_key().decode())


@pytest.fixture(scope="session")
def keybox(fernet_key: Secret) -> KeyBox:
    return KeyBox([fernet_key])
