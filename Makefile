# mailproxy: `make run` serves config/mailproxy.yaml, `make test` installs what the tests need, runs
# `make lint` and then the tests (the CI runs exactly this), `make lint` runs ruff and mypy (configured
# in pyproject.toml), `make bench` runs bench/run.sh, `make clean` removes build leftovers.
# Works on a fresh Debian 12 as root with Python 3.11 and access to PyPI and Debian's apt repositories.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-deps lint bench clean distclean

# The venv itself; pip is only re-run when pyproject.toml changes (the stamps below).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

run: $(VENV)/.installed-run
	@# the self-signed certificate that config/mailproxy.yaml's TLS listeners use, made once
	-test -f config/tls/cert.pem || $(BIN)/mailproxy gen-cert --out config/tls --name localhost --name 127.0.0.1
	$(BIN)/mailproxy serve --config config/mailproxy.yaml

test-deps:
	bash scripts/install-test-deps.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy

test: test-deps lint $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	@if [ -f bench/run.sh ]; then bash bench/run.sh; else echo "bench: no bench/run.sh yet"; fi

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache $(VENV)/.installed-run $(VENV)/.installed-test
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# also the virtualenv
distclean: clean
	rm -rf $(VENV)
