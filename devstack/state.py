"""What `make run` keeps between runs in its folder (`.run/` unless CREDITGATE_RUN_DIR says otherwise).

- `postgres/`: the PostgreSQL cluster with the demo org, member, key and whatever was done with them.
- `demo.json` (mode 0600): the demo API key, shown once by the admin API and kept here so the next banner
  can print it again, with the secrets the data was made with (the admin token, and the BYOK encryption
  key without which members' stored provider keys could not be read).

`make run FRESH=1` (`python -m devstack run --fresh`) removes both and starts over.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "demo.json"
POSTGRES_DIR = "postgres"


@dataclass(frozen=True, slots=True)
class Demo:
    """The seeded demo org, its admin member and that member's API key."""

    org: str
    user: str
    email: str
    key_id: str
    key: str


@dataclass(frozen=True, slots=True)
class Kept:
    admin_token: str
    byok_keys: str
    demo: Demo | None = None


def new_secrets() -> Kept:
    return Kept(admin_token="cg-admin-" + secrets.token_urlsafe(24),
                byok_keys=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())


def load(home: Path) -> Kept | None:
    """The kept state, or None when there is none (or it cannot be read: then the run starts over)."""
    try:
        raw = json.loads((home / STATE_FILE).read_text())
        demo = Demo(**raw["demo"]) if raw.get("demo") else None
        return Kept(admin_token=str(raw["admin_token"]), byok_keys=str(raw["byok_keys"]), demo=demo)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(home: Path, kept: Kept) -> Path:
    """Write the state readable by its owner only (0600 from creation on, then renamed into place)."""
    path = home / STATE_FILE
    partial = home / (STATE_FILE + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(kept), out, indent=2)
        out.write("\n")
    os.replace(partial, path)
    return path


def forget(home: Path) -> None:
    """Start over: the PostgreSQL cluster and the kept key and secrets go."""
    (home / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(home / POSTGRES_DIR, ignore_errors=True)
