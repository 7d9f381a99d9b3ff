"""The ports `make run` listens on: each one set by a variable with a default, all checked before anything starts.

A taken port is refused with one line naming the port, the service and the variable to set, so `make run`
never starts half a stack or talks to a stranger already listening there (it once seeded another gateway on
8080 and failed with `POST /admin/orgs -> 401 Invalid API key`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Port:
    service: str
    variable: str
    default: int


# the gateway keeps the product's own variable; the others sit one above their usual ports, so a system
# PostgreSQL (5432) or Redis (6379) does not collide; 8001 is the fake provider's address in litellm_config.yaml
PORTS = (
    Port("gateway", "CREDITGATE_PORT", 8080),
    Port("LiteLLM", "CREDITGATE_LITELLM_PORT", 4000),
    Port("PostgreSQL", "CREDITGATE_POSTGRES_PORT", 5433),
    Port("Redis", "CREDITGATE_REDIS_PORT", 6380),
    Port("fake provider", "CREDITGATE_FAKE_PROVIDER_PORT", 8001),
)


@dataclass(frozen=True, slots=True)
class Ports:
    gateway: int
    litellm: int
    postgres: int
    redis: int
    fake_provider: int


def bind_error(port: int) -> OSError | None:
    """Why 127.0.0.1:`port` cannot be listened on now, or None when it can.

    SO_REUSEADDR as the servers set it: a port left in TIME_WAIT is free, one with a listener (on 127.0.0.1,
    0.0.0.0 or [::]) is not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc
    return None


def suggest(port: int, avoid: set[int]) -> int | None:
    """The first port above `port` that is free now and not planned for another service."""
    for candidate in range(port + 1, min(port + 200, 65536)):
        if candidate not in avoid and bind_error(candidate) is None:
            return candidate
    return None


def plan(env: Mapping[str, str]) -> tuple[Ports | None, list[str]]:
    """The five ports from `env` (defaults otherwise) and one line per problem; ports only when there is none."""
    chosen: dict[str, int] = {}
    problems: list[str] = []
    for spec in PORTS:
        raw = env.get(spec.variable, "").strip()
        if not raw:
            chosen[spec.variable] = spec.default
        elif raw.isdigit() and 1 <= int(raw) <= 65535:
            chosen[spec.variable] = int(raw)
        else:
            problems.append(f"creditgate: {spec.variable}={raw!r} is not a port (1-65535); "
                            f"set {spec.variable} to a free port (default {spec.default})")
    owner: dict[int, Port] = {}
    for spec in PORTS:
        port = chosen.get(spec.variable)
        if port is None:
            continue
        if port in owner:
            first = owner[port]
            problems.append(f"creditgate: port {port} is set twice, {first.variable} ({first.service}) and "
                            f"{spec.variable} ({spec.service}); set one of them to another port")
            continue
        owner[port] = spec
        error = bind_error(port)
        if error is None:
            continue
        alternative = suggest(port, set(chosen.values()))
        example = f" (make run {spec.variable}={alternative})" if alternative else ""
        if error.errno == errno.EADDRINUSE:
            problems.append(f"creditgate: port {port} ({spec.service}) is taken; "
                            f"set {spec.variable}=...{example}")
        else:
            problems.append(f"creditgate: port {port} ({spec.service}) cannot be used ({error.strerror}); "
                            f"set {spec.variable}=...{example}")
    if problems:
        return None, problems
    return Ports(*(chosen[spec.variable] for spec in PORTS)), []
