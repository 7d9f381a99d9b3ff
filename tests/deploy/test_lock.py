"""requirements.lock, what the image installs with `--require-hashes`: every runtime dependency of
pyproject.toml (and everything they need, extras included) pinned exactly with hashes, and the same
versions .venv runs the tests with."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import ROOT, Dockerfile

LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every entry of the lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert match, f"not an exact pin with hashes: {line[:80]}"
        name = canonicalize_name(match.group(1))
        assert name not in entries, f"{name} twice"
        entries[name] = (match.group(2), re.findall(r"sha256:([0-9a-f]{64})", match.group(3)))
    return entries


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_every_runtime_dependency_is_pinned_with_hashes() -> None:
    entries = locked()
    assert all(len(hashes) >= 1 for _, hashes in entries.values())
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(entries[name][0]), f"{name}=={entries[name][0]} breaks {requirement}"


def test_the_lock_is_closed_under_what_each_package_needs() -> None:
    """Walk the installed metadata from pyproject's dependencies (with their extras): every package reached
    is in the lock, so `pip install --no-deps -r requirements.lock` misses nothing."""
    entries = locked()
    environment = {k: str(v) for k, v in default_environment().items()}
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in runtime_requirements()]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        assert name in entries, f"{name} is needed but not locked: run `make lock`"
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            if requirement.marker is None or any(
                    requirement.marker.evaluate({**environment, "extra": extra}) for extra in (extras or {""})):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    reached = {name for name, _ in seen}
    assert set(entries) == reached, f"locked but not needed: {sorted(set(entries) - reached)}"


def test_venv_runs_the_locked_versions() -> None:
    mismatched = {name: (version, metadata.version(name)) for name, (version, _) in locked().items()
                  if metadata.version(name) != version}
    assert not mismatched, f"locked vs installed: {mismatched} (run `make install`)"


def test_the_image_installs_the_lock_with_hashes_then_the_project_alone() -> None:
    runs = [rest for stage in Dockerfile.read(ROOT / "Dockerfile").stages for word, rest in stage if word == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert "--require-hashes --no-deps -r requirements.lock" in installs[0]
    assert re.search(r"pip install --no-deps \.(\s|$)", installs[1])
    assert len(installs) == 2
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lock: .*\n\t.*pip-compile .*--generate-hashes", makefile, re.M)
    assert "--output-file requirements.lock pyproject.toml" in makefile
