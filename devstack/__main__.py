"""`python -m devstack run [--fresh]`: the whole stack, offline, seeded, in the foreground.

However it ends (Ctrl-C, SIGTERM, the terminal closing, the process that started it dying, a service
exiting) it stops every process it started. Its state, logs and scratch files live in one folder per
checkout (`.run/`, or CREDITGATE_RUN_DIR), and the demo data is reused unless `--fresh` (devstack/state.py).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import astuple, replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

from devstack import ports as port_plan
from devstack import services, state
from devstack.admin_client import AdminClient
from devstack.stack import Stack, start_stack
from devstack.state import Demo, Kept

POOL_GRANT = 1_000_000_000  # millicredits granted to the demo org's pool
ALLOCATION = 500_000_000  # millicredits the demo member may spend per month

BANNER = """
creditgate is running; this run started every process below, each on 127.0.0.1 only:
{listeners}

Demo data: {origin}.
Demo org {org} (starter): {pool_available:,} millicredits available in its pool.
Member {email} (org admin): {allocation_available:,} of {allocation_limit:,} millicredits left this {period}.
API key:      {key}   (kept in {state_file}, mode 0600)
Admin token:  {admin}
Console:      {gateway}/console   (sign in with the API key, an org admin's, or the admin token)

  curl -sS {gateway}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" -i \\
    -d '{{"model": "fake-gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl -sS {gateway}/v1/credits -H "Authorization: Bearer {key}"

  .venv/bin/python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{gateway}/v1", api_key="{key}")
stream = client.chat.completions.create(
    model="auto", messages=[{{"role": "user", "content": "Hello!"}}],
    stream=True, stream_options={{"include_usage": True}}, extra_headers={{"X-Power-Level": "eco"}})
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    if chunk.usage:
        print("\\nusage:", chunk.usage)
PY

Logs: {logs}/
Stop: Ctrl-C. Closing the terminal, `kill {pid}` or the end of whatever started this also stops every
process above.
"""


class Stopping(BaseException):
    """A signal asked the run to stop (a BaseException, so no `except Exception` swallows it)."""


class Signals:
    """Turns the first SIGINT, SIGTERM or SIGHUP into `Stopping`; once stopping, later ones are ignored so
    a second Ctrl-C cannot cut the clean-up short (each service's stop is bounded and ends in SIGKILL).

    It also watches the controlling terminal for a hang-up: when `make run` is the terminal's session leader
    (`exec make run`, a terminal or IDE running it directly), closing the terminal signals make alone, and
    make waits for its child instead of passing the signal on.
    """

    def __init__(self) -> None:
        self.stopping = False
        self.terminal: select.poll | None = None

    def install(self) -> None:
        nohup = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN  # the terminal closing is meant not to stop it
        for sig in (signal.SIGINT, signal.SIGTERM) if nohup else (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self)  # SIGINT too when started in the background, where it is ignored
        if not nohup:
            try:
                tty = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
            except OSError:
                return  # no controlling terminal
            self.terminal = select.poll()
            self.terminal.register(tty, select.POLLHUP)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.stop(f"{signal.Signals(signum).name} received")

    def stop(self, why: str) -> None:
        if not self.stopping:
            self.stopping = True
            raise Stopping(why)

    def check_terminal(self) -> None:
        """Stop if the controlling terminal has hung up (checked without reading what was typed)."""
        hung_up = select.POLLHUP | select.POLLERR | select.POLLNVAL
        if self.terminal is not None and any(events & hung_up for _, events in self.terminal.poll(0)):
            self.stop("the terminal closed")


def say(text: str, stream: TextIO | None = None) -> None:
    """Print, surviving a terminal that has gone (after SIGHUP writes fail with EIO): clean-up must go on."""
    out = stream or sys.stdout
    try:
        print(text, file=out, flush=True)
    except (OSError, ValueError):
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def lock(home: Path) -> TextIO | None:
    """Hold `home` for this run alone (released by the kernel when the process ends, however it ends)."""
    handle = open(home / ".lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def tidy(home: Path) -> None:
    """Keep the previous run's logs as logs.previous/; drop scratch folders a killed run may have left."""
    logs = home / "logs"
    if logs.exists():
        shutil.rmtree(home / "logs.previous", ignore_errors=True)
        logs.rename(home / "logs.previous")
    shutil.rmtree(home / "scratch", ignore_errors=True)


def credits(gateway: str, key: str) -> dict[str, Any] | None:
    """`GET /v1/credits` as the member, or None when the key is refused."""
    answer = httpx.get(f"{gateway}/v1/credits", headers={"authorization": f"Bearer {key}"}, timeout=30)
    if answer.status_code in (401, 403):
        return None
    answer.raise_for_status()
    return dict(answer.json())


def seed(admin: AdminClient) -> Demo:
    email = "demo@example.com"
    org = admin.org("Demo Org", "starter")
    user = admin.user(email, "Demo Member")
    admin.member(org, user, role="admin", allocation_millicredits=ALLOCATION, allocation_period="month", default=True)
    admin.grant(org, POOL_GRANT, reason="demo credit", key="demo-seed")
    key_id, key = admin.key(user, name="demo")
    return Demo(org=org, user=user, email=email, key_id=key_id, key=key)


def demo_data(stack: Stack) -> tuple[Demo, str]:
    """The demo member to print and where its data came from: seeded now, or kept from an earlier run (with
    a new key if the kept one was revoked). Whatever it is, it is saved for the next run."""
    assert stack.gateway is not None
    token, byok = stack.env["CREDITGATE_ADMIN_TOKEN"], stack.env["CREDITGATE_BYOK_KEYS"]
    admin = AdminClient(stack.gateway.url, token)
    try:
        if stack.kept is None or stack.kept.demo is None:
            demo, origin = seed(admin), f"fresh demo data, kept in {stack.home} for the next run"
        else:
            demo, origin = stack.kept.demo, f"reusing demo data from {stack.home}"
            if credits(stack.gateway.url, demo.key) is None:
                try:
                    key_id, key = admin.key(demo.user, name="demo")
                except RuntimeError as exc:
                    raise RuntimeError(f"the demo data kept in {stack.home} is unusable ({exc}); "
                                       "`make run FRESH=1` starts over") from None
                demo = replace(demo, key_id=key_id, key=key)
                origin += " (its kept API key no longer worked: this is a new one)"
    finally:
        admin.close()
    state.save(stack.home, Kept(admin_token=token, byok_keys=byok, demo=demo))
    return demo, origin + ("" if origin.startswith("fresh") else "; `make run FRESH=1` starts over")


def banner(stack: Stack, demo: Demo, origin: str) -> str:
    assert stack.gateway is not None
    balance = credits(stack.gateway.url, demo.key)
    if balance is None:
        raise RuntimeError("the demo API key was refused right after it was made")
    allocation = balance["allocation"]
    urls = (stack.gateway.url, stack.url("litellm"), stack.env["CREDITGATE_DATABASE_URL"], stack.url("redis"),
            stack.url("fake-provider"))
    listeners = "\n".join(f"  {spec.service:<14} {spec.variable + '=' + str(port):<36} {url}"
                          for spec, port, url in zip(port_plan.PORTS, astuple(stack.ports), urls, strict=True))
    return BANNER.format(
        listeners=listeners, gateway=stack.gateway.url, origin=origin, org=demo.org,
        email=demo.email, pool_available=balance["pool"]["available"], allocation_available=allocation["available"],
        allocation_limit=allocation["limit"], period=allocation["period"], key=demo.key,
        state_file=stack.home / state.STATE_FILE, admin=stack.env["CREDITGATE_ADMIN_TOKEN"],
        logs=services.logdir(), pid=os.getpid(),
    )


def run(fresh: bool) -> int:
    """Check the ports, hold the run folder, start, seed or reuse, print the banner, wait; stop everything."""
    signals = Signals()
    signals.install()
    services.die_with_parent(signal.SIGTERM)  # `make` (or whatever started us) killed outright: stop too
    ports, problems = port_plan.plan(os.environ)
    if ports is None:  # before anything is started or even created
        for line in problems:
            say(line, sys.stderr)
        return 1
    home = services.run_dir()
    held = lock(home)  # a local, so the lock lasts as long as this run
    if held is None:
        say(f"creditgate: another `make run` is using {home}; stop it, or set CREDITGATE_RUN_DIR to another "
            "folder", sys.stderr)
        return 1
    tidy(home)
    if fresh:
        state.forget(home)
    stack = Stack(home, ports)
    say("starting LiteLLM, PostgreSQL, Redis, the fake provider and the gateway ...")
    try:
        start_stack(stack, state.load(home))
        say(banner(stack, *demo_data(stack)))
        while all(svc.alive() for svc in stack.services):
            signals.check_terminal()
            time.sleep(0.5)
        dead = ", ".join(svc.name for svc in stack.services if not svc.alive())
        say(f"creditgate: {dead} exited (logs in {services.logdir()}); stopping everything", sys.stderr)
        return 1
    except Stopping as stop:
        say(f"{stop}: stopping everything ...", sys.stderr)
        return 0
    except (RuntimeError, OSError, httpx.HTTPError, subprocess.CalledProcessError) as exc:
        say(f"creditgate: {exc}", sys.stderr)
        return 1
    finally:
        signals.stopping = True
        stack.stop()
        say("stopped.", sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--fresh", action="store_true",
                        help="start over: drop the kept demo data (make run FRESH=1)")
    args = parser.parse_args()
    return run(args.fresh)


if __name__ == "__main__":
    sys.exit(main())
