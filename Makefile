# Two commands for a fresh clone (see README.md):
#   make run    install, then start the gateway on config/gateway.yaml with the demo upstream
#   make test   install everything the suite needs, then run it (ruff, mypy and pytest)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test install system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	@$(PY) -m gateway.demo --port 8001 & DEMO=$$!; \
	trap 'kill $$DEMO 2>/dev/null' EXIT INT TERM; \
	$(PY) -m gateway run --config config/gateway.yaml

system-deps:
	@bash scripts/install-system-deps.sh

test: system-deps install
	$(PY) -m pytest

bench: system-deps install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
