# The two commands a new user needs:
#   make test   create/refresh .venv and run lint (ruff, mypy) + the test suite
#   make run    create/refresh .venv and run the main job on the built-in synthetic dataset
# The project needs Python 3.11 (pyproject.toml): python3.11 when it is on the PATH, else python3;
# another interpreter: make test PYTHON=/path/to/python3.11
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint run clean-outputs image test-containers

venv: $(STAMP)

# Rebuilt when missing or older than the dependency files (a stale environment).
# requirements.lock: what the pipeline runs with (also the container image's); requirements-dev.lock: the tests' tools.
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "make: the project needs Python 3.11, and PYTHON=$(PYTHON) is $$($(PYTHON) -V 2>&1);" \
	       "run: make $(MAKECMDGOALS) PYTHON=/path/to/python3.11" >&2; exit 2; }
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

# The project image, built here with podman (installed with apt when missing) on a local Debian 12 base
# made once; layers are reused (docs/KUBEFLOW.md "Build and push the image").
image: $(STAMP)
	$(BIN)/python -m containers image

# The image, then the pipeline with every step in its own container and the TrainJob's nodes as
# containers (docs/KUBEFLOW.md "Running the pipeline locally").
test-containers: $(STAMP)
	$(BIN)/python -m containers test
