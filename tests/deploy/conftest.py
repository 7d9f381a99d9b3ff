"""What the deployment files are checked against: the contract's variables as `proxy/config/settings.py`
declares them, the files of `deploy/`, and the Dockerfile read the way Docker reads it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.config.settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTINGS = ROOT / "proxy" / "config" / "settings.py"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "creditgate.json"


def known_variables() -> frozenset[str]:
    """Every CREDITGATE_ variable settings.py reads (its source is the list)."""
    return frozenset(re.findall(r'"(CREDITGATE_[A-Z0-9_]+)"', SETTINGS.read_text()))


def required_variables() -> frozenset[str]:
    """The variables `Settings.from_env` refuses to start without (from its own error lines)."""
    try:
        Settings.from_env({})
    except ConfigError as exc:
        return frozenset(line.split()[0] for line in str(exc).splitlines() if line.endswith("is required but not set"))
    raise AssertionError("Settings.from_env({}) accepted an empty environment")


def yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel of the Grafana dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


@dataclass
class Dockerfile:
    """The final stage of a Dockerfile: its instructions (continuation lines joined), ENV, USER, CMD and
    HEALTHCHECK; `stages` has every stage's instructions."""

    stages: list[list[tuple[str, str]]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        out = cls()
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            if word.upper() == "FROM":
                out.stages.append([])
            out.stages[-1].append((word.upper(), rest.strip()))
        return out

    @property
    def final(self) -> list[tuple[str, str]]:
        return self.stages[-1]

    def last(self, instruction: str) -> str:
        found = [rest for word, rest in self.final if word == instruction]
        assert found, f"no {instruction} in the final stage"
        return found[-1]

    def exec_form(self, instruction: str) -> list[str]:
        """CMD or HEALTHCHECK's command as the JSON array Docker runs without a shell."""
        rest = self.last(instruction)
        if instruction == "HEALTHCHECK":
            rest = rest[rest.index(" CMD ") + len(" CMD "):].strip() if not rest.startswith("CMD ") else rest[4:]
        value = json.loads(rest)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{instruction} is not exec form"
        return value

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for word, rest in self.final:
            if word == "ENV":
                for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest):
                    env[key] = value
        return env
