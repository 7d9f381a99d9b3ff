# creditgate: `make run` (the whole stack, offline, seeded) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
LLM_VENV := .venv-litellm
PY := $(VENV)/bin/python

.PHONY: install lock run test test-fast lint bench bench-gateway bench-full bench-ledger bench-json bench-ratelimit bench-tracing chaos bench-correctness clean

NODE_CLIENTS := tests/clients/node/node_modules/.installed

install: $(VENV)/.installed $(LLM_VENV)/.installed .system-ok $(NODE_CLIENTS)

.system-ok: scripts/install-system.sh
	bash scripts/install-system.sh
	@touch $@

# openai-node for tests/clients, as its package-lock.json pins it (npm ci), once node and npm are there
$(NODE_CLIENTS): tests/clients/node/package-lock.json scripts/install-node-clients.sh .system-ok
	bash scripts/install-node-clients.sh

# the runtime dependencies exactly as the image installs them (requirements.lock), then the test tools
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# requirements.lock: every runtime dependency of pyproject.toml pinned with its hashes, for the image
# (Dockerfile) and .venv. Run after changing a dependency; pins already in the file are kept unless the
# change needs otherwise (pip-compile --upgrade moves them all). Reads the package index only (--isolated).
lock: $(VENV)/.installed
	$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --pip-args '--isolated' --output-file requirements.lock pyproject.toml

# LiteLLM lives in its own venv (740 MB, its own pins); prisma is needed for its error handler.
$(LLM_VENV)/.installed:
	$(PYTHON) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/pip install -q --disable-pip-version-check 'litellm[proxy]==1.106.2' 'prisma==0.15.0'
	@touch $@

# Ports (all on 127.0.0.1), set like `make run CREDITGATE_PORT=8081`: CREDITGATE_PORT (gateway, 8080),
# CREDITGATE_LITELLM_PORT (4000), CREDITGATE_POSTGRES_PORT (5433), CREDITGATE_REDIS_PORT (6380),
# CREDITGATE_FAKE_PROVIDER_PORT (8001). Demo data, logs and scratch files stay in .run/ (CREDITGATE_RUN_DIR);
# FRESH=1 starts the demo data over. No shell in between: make's signals reach devstack directly.
run: install
	$(PY) -m devstack run $(if $(filter 1 yes true,$(FRESH)),--fresh)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m 'not slow'

lint: install
	$(VENV)/bin/ruff check proxy policies tests devstack bench
	$(VENV)/bin/mypy

# one run, side by side (bench/report.py): issue 13's aims with met / not met, written to BENCHMARKS.md (~3 min)
bench: install
	$(PY) -m bench.report

bench-gateway: install
	$(PY) -m bench.gateway

# the same benchmark with the whole product: its own PostgreSQL (fsync on) and Redis, reserve + settle
bench-full: install
	$(PY) -m bench.gateway_full

bench-ledger: install
	$(PY) -m bench.ledger

# the admin and caller APIs' JSON layer: msgspec (chosen) against pydantic v2 and orjson alone
bench-json: install
	$(PY) -m bench.json_layer

# the GCRA rate limiter against the fixed window it replaced, in one process against one Redis
bench-ratelimit: install
	$(PY) -m bench.ratelimit

# tracing's CPU per request: off (W3C ids only) and on (spans exported over OTLP/HTTP to a local collector)
bench-tracing: install
	$(PY) -m bench.tracing

# two replicas, LiteLLM, PostgreSQL, Redis, Prometheus under a seeded load while each part is killed or
# restarted in turn; the money figures after each fault, non-zero exit when one is wrong (a few minutes)
chaos: install
	$(PY) -m bench.chaos --seed 7 --seconds 180

# the correctness table the README leads with: a fixed seed, 3,000 requests through the real stack
bench-correctness: install
	$(PY) -m bench.correctness --seed 2026 --requests 3000

clean:
	rm -rf $(VENV) $(LLM_VENV) .system-ok
