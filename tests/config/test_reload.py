"""Reloading without a restart, on real files and real signals: SIGHUP and changed files swap in a new
snapshot checked as start-up checks it; a bad file is refused line by line and the old one serves on;
LiteLLM's model info is retried until it answers; a price table the database could not take is stored
once it can. (Through the real stack, SIGHUP to a running gateway: tests/e2e/test_live_config.py.)"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from proxy.config.catalogue import check_policy, load_catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.modelinfo import InfoRow
from proxy.config.policy import load_policy
from proxy.config.reload import Reloader
from tests.waiting import until

MODELS = """
model_list:
  - model_name: m
    litellm_params: {{model: openai/m, input_cost_per_token: {price}, output_cost_per_token: 0.000002}}
  - model_name: mini
    litellm_params: {{model: openai/gpt-4o-mini}}
"""
POLICY = """
credits_per_usd: 1000
default_power_level: eco
power_levels: {{eco: {{multiplier: 1, max_tokens: 100, models: [m]}}}}
tiers: {{starter: {{markup: {markup}, models: ["*"]}}}}
"""
INFO = b"""{"data": [{"model_name": "mini", "litellm_params": {"model": "openai/gpt-4o-mini"},
  "model_info": {"id": "h-mini", "mode": "chat", "input_cost_per_token": 1.5e-7, "output_cost_per_token": 6e-7}}]}"""


class Files:
    def __init__(self, root: Path) -> None:
        self.models, self.policy = root / "litellm.yaml", root / "policy.yaml"
        self.write()

    def write(self, price: str = "0.000001", markup: str = "0.4") -> None:
        self.models.write_text(MODELS.format(price=price))
        self.policy.write_text(POLICY.format(markup=markup))

    def load(self, info: Sequence[InfoRow] | None) -> Snapshot:
        policy, catalogue = load_policy(self.policy), load_catalogue(self.models, info)
        check_policy(policy, catalogue)
        return Snapshot.of(policy, catalogue)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


class Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = Collect(records)
    logger = logging.getLogger("creditgate.config")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


class Outcomes(list[tuple[str, str | None]]):
    def __call__(self, outcome: str, snapshot: Snapshot | None) -> None:
        self.append((outcome, snapshot.version if snapshot else None))


def price(live: LiveConfig) -> object:
    model = live.current.catalogue.get("m")
    assert model is not None
    return model.highest.input


async def test_a_good_file_is_swapped_in_whole_and_logged_with_its_version(
        files: Files, logged: list[logging.LogRecord]) -> None:
    live, outcomes = LiveConfig(files.load(None)), Outcomes()
    first = live.current
    reloader = Reloader(live, files.load, on_reload=outcomes)
    await reloader.open()
    try:
        files.write(price="0.000003", markup="0.5")
        reloader.request("SIGHUP")
        await until(lambda: live.current is not first)
        assert str(price(live)) == "0.000003" and str(live.current.policy.tier("starter").markup) == "0.5"  # type: ignore[union-attr]
        assert outcomes == [("ok", live.current.version)]
        line = next(r for r in logged if r.getMessage() == "configuration reloaded")
        assert (line.reason, line.price_version, line.previous_price_version) == (  # type: ignore[attr-defined]
            "SIGHUP", live.current.version, first.version)
        assert first.version != live.current.version
    finally:
        await reloader.close()


async def test_a_bad_file_is_refused_line_by_line_and_the_old_configuration_serves_on(
        files: Files, logged: list[logging.LogRecord]) -> None:
    live, outcomes = LiveConfig(files.load(None)), Outcomes()
    first = live.current
    reloader = Reloader(live, files.load, on_reload=outcomes)
    await reloader.open()
    try:
        files.policy.write_text(POLICY.format(markup="-1").replace("models: [m]", "models: [m, typo]"))
        assert await reloader.reload("SIGHUP") is False
        assert live.current is first and outcomes == [("failed", None)]
        assert [r.getMessage() for r in logged if r.levelno == logging.ERROR] == [
            f"configuration refused: {files.policy}: tiers.starter.markup must be at least 0, got -1",
            "configuration reload refused; the previous configuration keeps serving"]
        assert all(r.price_version == first.version for r in logged if r.levelno == logging.ERROR)  # type: ignore[attr-defined]
        files.policy.write_text(POLICY.format(markup="0.4").replace("models: [m]", "models: [m, typo]"))
        assert await reloader.reload("SIGHUP") is False  # checked against the models, as at start-up
        assert logged[-2].getMessage() == ("configuration refused: CREDITGATE_POLICY_CONFIG: model 'typo' is not in "
                                           "the LiteLLM config's model_list")
        files.models.write_text("model_list: [")
        assert await reloader.reload("SIGHUP") is False
        assert logged[-2].getMessage().startswith(f"configuration refused: {files.models}: not valid YAML: line 1")
        assert live.current is first
    finally:
        await reloader.close()


async def test_sighup_reloads_and_close_gives_the_signal_back(files: Files) -> None:
    live = LiveConfig(files.load(None))
    first, before = live.current, signal.getsignal(signal.SIGHUP)
    reloader = Reloader(live, files.load)
    await reloader.open()
    try:
        assert signal.getsignal(signal.SIGHUP) == reloader._on_signal  # else SIGHUP would end this test run
        files.write(price="0.000005")
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: live.current is not first)
        assert str(price(live)) == "0.000005"
    finally:
        await reloader.close()
    assert signal.getsignal(signal.SIGHUP) == before


async def test_a_changed_file_is_reloaded_when_polling(files: Files) -> None:
    live = LiveConfig(files.load(None))
    first = live.current
    reloader = Reloader(live, files.load, watch=(files.models, files.policy), poll_seconds=0.05)
    await reloader.open()
    try:
        await asyncio.sleep(0.2)
        assert live.current is first  # nothing changed: nothing reloaded
        replacement = files.models.with_suffix(".new")
        replacement.write_text(MODELS.format(price="0.000007"))
        replacement.replace(files.models)  # a new inode, as a ConfigMap update makes
        await until(lambda: live.current is not first)
        assert str(price(live)) == "0.000007"
    finally:
        await reloader.close()


def fetcher(failures: int) -> tuple[Callable[[], Awaitable[bytes]], list[int]]:
    calls: list[int] = []

    async def fetch() -> bytes:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionRefusedError("LiteLLM is not up yet")
        return INFO

    return fetch, calls


async def test_model_info_is_retried_until_litellm_answers(files: Files, logged: list[logging.LogRecord]) -> None:
    live, outcomes = LiveConfig(files.load(None)), Outcomes()
    assert not live.current.catalogue.complete and not live.current.catalogue.get("mini").priced()  # type: ignore[union-attr]
    fetch, calls = fetcher(failures=3)
    reloader = Reloader(live, files.load, fetch=fetch, on_reload=outcomes, retry_seconds=(0.05, 0.2))
    await reloader.open()
    try:
        assert len(calls) == 1 and not live.current.catalogue.complete  # tried once at start-up
        await until(lambda: live.current.catalogue.complete)
        mini = live.current.catalogue.get("mini")
        assert mini is not None and mini.priced() and mini.deployments[0].id == "h-mini"
        assert len(calls) == 4 and outcomes == [("ok", live.current.version)]
        warnings = [r.getMessage() for r in logged if r.levelno == logging.WARNING]
        assert warnings == ["LiteLLM's model info could not be read; retrying in the background"]  # said once
        await asyncio.sleep(0.3)
        assert len(calls) == 4  # nothing owed: no more fetches
        reloader.request("SIGHUP")  # every reload reads it again (LiteLLM may have a new config)
        await until(lambda: len(calls) == 5)
    finally:
        await reloader.close()


async def test_a_readiness_probe_fetches_at_once(files: Files) -> None:
    live = LiveConfig(files.load(None))
    fetch, calls = fetcher(failures=1)
    reloader = Reloader(live, files.load, fetch=fetch, retry_seconds=(30.0, 30.0))
    await reloader.open()
    try:
        reloader.nudge()  # a probe right after the start-up attempt: not yet (at most once a second)
        await asyncio.sleep(1.05)
        assert len(calls) == 1
        reloader.nudge()
        reloader.nudge()
        await until(lambda: live.current.catalogue.complete)
        assert len(calls) == 2
    finally:
        await reloader.close()


async def test_a_price_table_the_database_could_not_take_is_stored_once_it_can(files: Files) -> None:
    live = LiveConfig(files.load(None))
    stored: list[str] = []
    down = [True]

    async def register(snapshot: Snapshot) -> None:
        if down[0]:
            raise ConnectionRefusedError("PostgreSQL is down")
        stored.append(snapshot.version)

    reloader = Reloader(live, files.load, register=register, retry_seconds=(0.05, 0.1))
    await reloader.open()
    try:
        first = live.current
        files.write(price="0.000009")
        assert await reloader.reload("SIGHUP") is True  # nothing can be held without the database anyway
        assert live.current is not first
        down[0] = False
        await until(lambda: stored == [first.version, live.current.version])
    finally:
        await reloader.close()
