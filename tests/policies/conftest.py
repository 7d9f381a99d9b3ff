"""Fixtures of the policy unit tests: the in-memory directory and ledger (the shipped configuration files
and a Fernet key box are tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import FakeLedger
from tests.policies.policy_support import FakeDirectory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()
