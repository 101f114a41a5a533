# Two commands: `make run` serves everything, `make test` checks everything.
# Both work on a fresh clone with PostgreSQL and Redis on their standard local ports.

VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.12 || ls -d $$HOME/.pyenv/versions/3.12*/bin/python 2>/dev/null | tail -1)
STAMP := $(VENV)/.installed

.PHONY: run test install services db lint typecheck pytest sdk bench clean

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
	@$(PY) -m clinik.lib.services check

db: services
	@$(PY) -m clinik.lib.services bootstrap
	CLINIK_DB_AS_OWNER=1 $(PY) manage.py migrate --no-input

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

# The TypeScript SDK and React components (npm workspace under sdk/): installed from the
# committed lockfile, built and type-checked; their tests run inside pytest
# (tests/test_sdk.py) against a live server. `make run` does not need them.
SDK_STAMP := sdk/node_modules/.installed
$(SDK_STAMP): sdk/package-lock.json
	cd sdk && npm ci --no-audit --no-fund --loglevel=error
	touch $(SDK_STAMP)

sdk: $(SDK_STAMP)
	cd sdk && npm run --silent build && npm run --silent typecheck

pytest: $(STAMP) services
	@$(PY) -m clinik.lib.services bootstrap
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
