# The handful of verbs: install, up, test, lint, bench, migrate.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# A CPU build of torch (on this project's machines the wheel is on local disk);
# on a GPU machine set TORCH to the build you want, e.g. TORCH="torch>=2.3".
TORCH ?= torch==2.13.0
PORT ?= 8000
SHELL := /bin/bash

.PHONY: install up test lint bench migrate services browser java sandbox-tools clean

install: sandbox-tools $(VENV)/.installed

# bubblewrap builds the sandbox user code runs in (libseccomp2 serves its seccomp filter);
# installed with apt where this machine lets us, else the workers say what to install.
sandbox-tools:
	@command -v bwrap >/dev/null && ldconfig -p 2>/dev/null | grep -q libseccomp.so.2 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2 >/dev/null) \
	  || echo "bubblewrap is absent and cannot be installed here: install it (apt-get install bubblewrap); the builder and evaluator refuse to run user code without it"; }

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "$(TORCH)"
	$(PIP) install -q --disable-pip-version-check -e '.[torch,dev]'
	touch $@

up: install
	$(VENV)/bin/weighbridge up --demo --port $(PORT)

# Start Postgres and MariaDB where this machine has them; tests skip a backend that is absent.
services:
	@if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null; then \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n 1) main start 2>/dev/null || true; fi
	@if [ -x /usr/sbin/mariadbd ]; then \
	  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true; fi
	@for i in $$(seq 40); do \
	  (echo > /dev/tcp/127.0.0.1/5432) 2>/dev/null && (echo > /dev/tcp/127.0.0.1/3306) 2>/dev/null && break; \
	  sleep 0.5; done; \
	for p in 5432 3306; do (echo > /dev/tcp/127.0.0.1/$$p) 2>/dev/null \
	  && echo "port $$p: up" || echo "port $$p: absent (its tests are skipped)"; done

# Debian's chromium for the browser tests (never `playwright install`); skipped where apt is not ours.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium absent: the browser tests are skipped"; }

# A Java runtime for the TorchServe conformance test (tests/conformance): TorchServe's
# frontend is Java. apt only where this machine lets us; else that test is skipped.
java:
	@command -v java >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null) \
	  || echo "java absent: the TorchServe conformance test is skipped"; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Two pytest processes (pytest-xdist), each taking whole files: most tests wait on servers,
# subprocesses and sandboxes, so two share this machine's two cores well (18 min -> 13 min).
TEST_WORKERS ?= 2
test: install services browser java lint
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

# Run as modules: bench/queue.py must not shadow the standard library's queue.
bench: install
	$(PY) -m bench.upload
	$(PY) -m bench.queue
	$(PY) -m bench.metrics
	$(PY) -m bench.runner
	$(PY) -m bench.latency
	$(PY) -m bench.leaderboard

migrate: install
	$(VENV)/bin/weighbridge db upgrade

clean:
	rm -rf .weighbridge .pytest_cache .ruff_cache .mypy_cache
