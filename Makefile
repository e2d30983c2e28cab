# Newsbeat. `make run` starts everything on embedded defaults; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

# Tests use the local PostgreSQL and Redis unless told otherwise (.ci/run starts them).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/newsbeat
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test lint bench audit install install-dev clean

$(VENV)/.base: requirements/base.txt requirements/prod.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/prod.txt
	touch $@

$(VENV)/.dev: $(VENV)/.base requirements/dev.txt
	$(PIP) install -q -r requirements/dev.txt
	touch $@

install: $(VENV)/.base
install-dev: $(VENV)/.dev

run: $(VENV)/.base
	$(PY) -m project.run

test: $(VENV)/.dev
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Known vulnerabilities in the pinned production requirements; exceptions, each with a reason, in
# requirements/audit-ignore.txt. Exits 3 when it could not audit (no vulnerability service).
audit: $(VENV)/.dev
	$(PY) .ci/audit.py $(AUDIT_ARGS)

bench: $(VENV)/.dev
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
