"""`python -m devstack run`: the whole stack, offline, seeded, in the foreground (Ctrl-C stops it)."""

from __future__ import annotations

import os
import signal
import sys
import time

from devstack.admin_client import AdminClient
from devstack.services import ROOT
from devstack.stack import Stack, start_stack

SNIPPET = """
creditgate is running at {url}  (LiteLLM {litellm}, PostgreSQL, Redis: all on 127.0.0.1)

Demo org {org} ({tier}), member {email}, {credits:,} credits granted.
API key (shown once):  {key}
Admin token:           {admin}

  curl -sS {url}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" -i \\
    -d '{{"model": "fake-gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl -sS {url}/v1/credits -H "Authorization: Bearer {key}"

  .venv/bin/python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{key}")
stream = client.chat.completions.create(
    model="auto", messages=[{{"role": "user", "content": "Hello!"}}],
    stream=True, stream_options={{"include_usage": True}}, extra_headers={{"X-Power-Level": "eco"}})
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    if chunk.usage:
        print("\\nusage:", chunk.usage)
PY

Logs: {logs}.  Ctrl-C stops everything.
"""


def seed(stack: Stack) -> dict[str, str]:
    assert stack.gateway is not None
    admin = AdminClient(stack.gateway.url, stack.env["CREDITGATE_ADMIN_TOKEN"])
    try:
        org = admin.org("Demo Org", "starter")
        user = admin.user("demo@example.com", "Demo Member")
        admin.member(org, user, role="admin", allocation_millicredits=500_000_000, allocation_period="month",
                     default=True)
        admin.grant(org, 1_000_000_000, reason="demo credit", key="demo-seed")
        _, key = admin.key(user, name="demo")
    finally:
        admin.close()
    return {"org": org, "key": key, "email": "demo@example.com"}


def run() -> int:
    workdir = ROOT / ".run"
    workdir.mkdir(exist_ok=True)
    port = int(os.environ.get("CREDITGATE_PORT", "8080"))
    print("starting PostgreSQL, Redis, the fake provider, LiteLLM and the gateway ...", flush=True)
    stack = start_stack(workdir, gateway_port=port)
    try:
        demo = seed(stack)
        assert stack.gateway is not None
        print(SNIPPET.format(url=stack.gateway.url, litellm=stack.services[3].url, tier="starter",
                             credits=1_000_000, admin=stack.env["CREDITGATE_ADMIN_TOKEN"],
                             logs=stack.gateway.log.parent, **demo), flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
        while all(svc.alive() for svc in stack.services):
            time.sleep(0.5)
        dead = [svc.name for svc in stack.services if not svc.alive()]
        print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping ...", file=sys.stderr)
        stack.stop()


if __name__ == "__main__":
    if sys.argv[1:] != ["run"]:
        print("usage: python -m devstack run", file=sys.stderr)
        sys.exit(2)
    sys.exit(run())
