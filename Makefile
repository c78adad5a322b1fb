# The two commands of the README, and their parts. Everything is idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test test-fast up down status images venv clean-venv

## demo: set up everything (Docker, local cluster, images, desktop stack) and run `cloudify firefox`
## on your screen, or on a virtual one watched over VNC (`make demo ARGS="libreoffice --once"`)
demo: venv
	$(PY) -m localenv demo $(ARGS)

## test: set up everything, then run the whole test suite: the fast, end-to-end and home suites side
## by side (tests/suites.py); `make test PYTEST_ARGS="tests/unit -x"` runs one plain pytest instead
test: venv
	$(PY) -m localenv up
	$(PY) -m tests.suites $(PYTEST_ARGS)

## test-fast: only the tests that need no cluster, Docker or display (all in tests/unit), on every
## core (pytest-xdist; they mostly wait on timers and subprocesses): on 2 cores about 40 s, 42 s of CPU
test-fast: venv
	$(PY) -m pytest tests/unit -m "not e2e" --numprocesses=auto --maxprocesses=4 $(PYTEST_ARGS)

## up/down/status: the local environment alone; extra flags in ARGS (`make down ARGS=--wipe`)
up: venv
	$(PY) -m localenv up $(ARGS)
down: venv
	$(PY) -m localenv down $(ARGS)
status: venv
	$(PY) -m localenv status $(ARGS)
images: venv
	$(PY) -m localenv images

## venv: the project's virtualenv with its dependencies (pip caches wheels under ~/.cache/pip)
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

clean-venv:
	rm -rf $(VENV)
