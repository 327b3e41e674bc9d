# The two commands a new user needs:
#   make test   create/refresh .venv and run lint (ruff, mypy) + the test suite
#   make run    create/refresh .venv and run the main job on the built-in synthetic dataset
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint run outdated clean-outputs

venv: $(STAMP)

# Rebuilt when missing or older than the dependency files (a stale environment).
# requirements.lock: what the pipeline runs with (also the container image's); requirements-dev.lock: the tests' tools.
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

run: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

# Which pinned direct dependencies have newer releases (held pins say why in requirements.lock)
outdated: $(STAMP)
	$(BIN)/python -m deps.outdated
