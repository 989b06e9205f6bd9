# Two commands on a fresh machine: `make dev` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev dev-standby test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/aplus dev

# Two bots, one active, on PostgreSQL (127.0.0.1:5432): try a failover by hand (README).
dev-standby: $(STAMP)
	$(VENV)/bin/aplus dev --standby

lint: $(STAMP)
	$(VENV)/bin/ruff check bot bridge synapse_module deploy tests
	$(VENV)/bin/ruff format --check bot bridge synapse_module deploy tests
	$(VENV)/bin/mypy bot bridge synapse_module deploy

# Every test on SQLite and on PostgreSQL (tests/support/databases.py), in TEST_WORKERS
# processes, each with its own Synapse: most of a test's time is waiting on Synapse.
# One backend: APLUS_TEST_DB=sqlite make test (or postgres).
TEST_WORKERS ?= 3

test: $(STAMP) lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

bench: $(STAMP)
	$(VENV)/bin/pytest -q -s -p no:cacheprovider tests/bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
