# First Principle: make run (the whole platform), make test (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run stop status test test-fast lint bench verify venv lock

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt ingestion/_rawframe.c scripts/build_ext.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) scripts/build_ext.py || echo "warning: the raw store's C framer was not built (needs gcc and libssl-dev); it runs on its Python framer and tests/ingestion/test_rawframe.py will fail"
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the pinned requirements

run: $(STAMP) ## Start everything (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set)
	$(PY) -m trading.runtime run

stop: ## Stop every process and the embedded services
	$(PY) -m trading.runtime stop

status: ## Show the supervised processes
	$(PY) -m supervisor.supervisorctl -c var/supervisord.conf status

test: $(STAMP) ## The whole suite, with coverage floor, lint and layer contracts
	bash scripts/test.sh

test-fast: $(STAMP) ## Unit tests only (no real process set, no browser)
	bash scripts/test.sh --fast

lint: $(STAMP) ## ruff, import-linter contracts, Django checks
	bash scripts/lint.sh

bench: $(STAMP) ## Run every benchmark; each prints JSON
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

verify: $(STAMP) ## Verify the raw store and the audit chain
	$(PY) manage.py verify_raw --all && $(PY) manage.py verify_audit

lock: ## Re-pin requirements.txt from requirements.in
	$(PY) -m pip install -r requirements.in && $(PY) -m pip freeze > requirements.txt
