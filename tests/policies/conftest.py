"""Fixtures of the policy unit tests: the shipped policy file and LiteLLM config, fakes, a Fernet key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from policy_support import FakeDirectory, FakeLedger

from proxy.config.catalogue import Catalogue, load_catalogue
from proxy.config.policy import PolicyConfig, load_policy
from proxy.config.settings import Secret
from proxy.directory.crypto import KeyBox
from proxy.gateway.tokens import TokenCounter

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def policy() -> PolicyConfig:
    return load_policy(ROOT / "policy.yaml")


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue(ROOT / "litellm_config.yaml")


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


@pytest.fixture(scope="session")
def fernet_key() -> Secret:
    return Secret(Fernet.generate_key().decode())


@pytest.fixture(scope="session")
def keybox(fernet_key: Secret) -> KeyBox:
    return KeyBox([fernet_key])
