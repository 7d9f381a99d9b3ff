# creditgate: `make run` (the whole stack, offline, seeded) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
LLM_VENV := .venv-litellm
PY := $(VENV)/bin/python

.PHONY: install run test test-fast lint bench bench-gateway bench-full bench-ledger bench-json chaos clean

install: $(VENV)/.installed $(LLM_VENV)/.installed .system-ok

.system-ok: scripts/install-system.sh
	bash scripts/install-system.sh
	@touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# LiteLLM lives in its own venv (740 MB, its own pins); prisma is needed for its error handler.
$(LLM_VENV)/.installed:
	$(PYTHON) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/pip install -q --disable-pip-version-check 'litellm[proxy]==1.106.2' 'prisma==0.15.0'
	@touch $@

run: install
	$(PY) -m devstack run

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m 'not slow'

lint: install
	$(VENV)/bin/ruff check proxy policies tests devstack bench
	$(VENV)/bin/mypy

bench: bench-gateway bench-full bench-ledger bench-json

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

clean:
	rm -rf $(VENV) $(LLM_VENV) .system-ok
