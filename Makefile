# pgbouncer-k8s: every target sets up what it needs (venv, PostgreSQL 15, PgBouncer 1.24).
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYS_STAMP := .build/.system-ready
SRC := $(wildcard src tests bench demo harness)

.PHONY: help test demo lint fmt typecheck unit functional e2e bench setup system lock clean \
	test-pgbouncer-sid test-pgbouncer-sid-subset

help:
	@echo "make demo   - the charm's life story on real PostgreSQL and PgBouncer (Juju simulated)"
	@echo "make test   - lint, type check, unit, functional and end-to-end tests"
	@echo "make bench  - benchmarks; results in bench/results/latest.md"
	@echo "make lint | fmt | typecheck | unit | functional | e2e"

$(STAMP): requirements-dev.lock
	@test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.lock
	@touch $(STAMP)

$(SYS_STAMP): scripts/setup-system.sh requirements-exporter.txt
	@bash scripts/setup-system.sh
	@mkdir -p .build && touch $(SYS_STAMP)

setup: $(STAMP) $(SYS_STAMP)
system: $(SYS_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/codespell $(SRC) docs README.md

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix $(SRC)
	$(VENV)/bin/ruff format $(SRC)

typecheck: $(STAMP)
	$(VENV)/bin/pyright

unit: setup
	$(PY) -m pytest -q tests/unit

functional: setup
	$(PY) -m pytest -q tests/functional

e2e: setup
	$(PY) -m pytest -q tests/e2e

test: setup lint typecheck
	$(PY) -m pytest -q tests/unit tests/functional tests/e2e
	@$(MAKE) --no-print-directory test-pgbouncer-sid-subset

# The version matrix (docs/image.md): PgBouncer 1.26.1 from Debian sid, built from its source
# where the archive serves it, else Debian's binary package with sid's libraries, into
# .build/pgbouncer-sid. `make test` runs the subset that passes on it; the whole functional and
# end-to-end tiers (known failures in docs/image.md) run with test-pgbouncer-sid. The subset
# holds what differs on 1.26.1 (its resolver, its loader wrapper, its shutdown) and what its
# fixes made pass (docs/image.md, "Version matrix"): about 100 s here, 45 s of it from issue 25.
SID_SUBSET := tests/functional/test_pool_options.py tests/functional/test_client_pooling.py \
	tests/functional/test_read_only_balancing.py tests/functional/test_go_exporter.py \
	tests/functional/test_tls.py tests/functional/test_backend_address.py tests/functional/test_rock.py \
	tests/functional/test_pgbouncer_workload.py::test_a_login_in_flight_at_sigterm_is_served_before_125_and_refused_from_it \
	tests/functional/test_pgbouncer_workload.py::test_listen_port_change_rolls_one_process_at_a_time \
	tests/e2e/test_harness_processes.py tests/e2e/test_port_change.py \
	tests/e2e/test_same_port_handover.py::test_a_pool_mode_change_fails_no_query_of_a_client_with_prepared_statements \
	tests/e2e/test_actions.py::test_pause_one_database_holds_its_clients_and_not_the_others_under_load

test-pgbouncer-sid-subset: setup
	@PGB_SUITE=sid bash scripts/setup-system.sh
	PGBOUNCER_BUILD=pgbouncer-sid $(PY) -m pytest -q $(SID_SUBSET)

test-pgbouncer-sid: setup
	PGB_SUITE=sid bash scripts/setup-system.sh
	PGBOUNCER_BUILD=pgbouncer-sid $(PY) -m pytest -q tests/functional tests/e2e

demo: setup
	$(PY) -m demo

bench: setup
	$(PY) -m bench

lock:
	rm -rf .lockvenv && $(PY_SYS) -m venv .lockvenv
	.lockvenv/bin/pip install -q -e '.[dev]'
	{ head -n2 requirements-dev.lock; .lockvenv/bin/pip freeze --exclude-editable; } > requirements-dev.lock.new
	mv requirements-dev.lock.new requirements-dev.lock && rm -rf .lockvenv

clean:
	rm -rf $(VENV) .build .pytest_cache .ruff_cache
