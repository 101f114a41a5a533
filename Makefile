# Two commands: `make run` serves everything, `make test` checks everything.
# Both work on a fresh clone: PostgreSQL and Redis are used where they answer (standard
# local ports by default); where nothing answers on a local address, embedded ones from
# the Python environment start there, with their data under var/.

VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.12 || ls -d $$HOME/.pyenv/versions/3.12*/bin/python 2>/dev/null | tail -1)
STAMP := $(VENV)/.installed

.PHONY: run test install services stop-embedded db lint typecheck pytest sdk bench clean smart-fetch

run: install services db
	$(VENV)/bin/honcho start -f Procfile

test: install services lint typecheck sdk pytest

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.12 not found: install it (pyenv install 3.12) or set PYTHON=/path/to/python3.12"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# FHIR R4 definitions: `npm pack` of the official package, cached under var/, compiled
# into compact tables the validator, the path guard and search read at start-up. The
# build skips every step whose output is current (about 0.2 s), so it always runs.
install: $(STAMP)
	@$(PY) -m clinik.fhir.build_definitions

services: $(STAMP)
	@$(PY) -m clinik.lib.services ensure

# Stop the embedded PostgreSQL and Redis that `make run`/`make test` may have started.
stop-embedded: $(STAMP)
	@$(PY) -m clinik.lib.services stop-embedded

db: services
	@$(PY) -m clinik.lib.services bootstrap
	CLINIK_DB_AS_OWNER=1 $(PY) manage.py migrate --no-input

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

# smart-fetch, the SMART bulk client one test runs, in a virtualenv of its own (its
# dependencies pin a botocore our boto3 refuses); the version is pinned in pyproject.toml.
SMART_FETCH := var/tools/smart-fetch/bin/smart-fetch
$(SMART_FETCH): pyproject.toml
	test -x var/tools/smart-fetch/bin/python || $(PYTHON) -m venv var/tools/smart-fetch
	var/tools/smart-fetch/bin/pip install --quiet "$$(grep -o 'smart-fetch==[0-9.]*' pyproject.toml)"
	touch $(SMART_FETCH)

smart-fetch: $(SMART_FETCH)

# The FHIR isolation, gateway and bundle concurrency modules run a second time with
# every application connection through a real PgBouncer in transaction mode (tests/pgbouncer.py).
POOLER_TESTS := tests/test_fhir_isolation.py tests/test_fhir_search_isolation.py \
	tests/test_fhir_bundle_isolation.py tests/test_fhir_bundle_kill.py \
	tests/test_fhir_conditional.py $(wildcard tests/test_gateway_*.py)

# The TypeScript SDK and React components (npm workspace under sdk/): installed from the
# committed lockfile, built and type-checked; their tests run inside pytest
# (tests/test_sdk.py) against a live server. `make run` does not need them.
SDK_STAMP := sdk/node_modules/.installed
$(SDK_STAMP): sdk/package-lock.json
	cd sdk && npm ci --no-audit --no-fund --loglevel=error
	touch $(SDK_STAMP)

sdk: $(SDK_STAMP)
	cd sdk && npm run --silent build && npm run --silent typecheck

pytest: $(STAMP) services $(SMART_FETCH)
	@$(PY) -m clinik.lib.services bootstrap
	$(VENV)/bin/pytest $(PYTEST_ARGS)
	DATABASE_POOLER=transaction PYTHONPATH=. $(VENV)/bin/pytest -p tests.pgbouncer --pgbouncer $(POOLER_TESTS)

clean:
	rm -rf $(VENV)
