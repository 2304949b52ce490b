# embedding-images: one entry point for set-up, tests, the local control plane and benchmarks.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: setup test test-unit cluster-up cluster-down tools bench clean

## setup: create .venv and install the project with its test dependencies
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## test: the whole suite (builds and starts the local control plane and helm on first use)
test: setup
	$(PYTEST) -q

## test-unit: only the tests that need neither the control plane nor helm
test-unit: setup
	$(PYTEST) -q -m 'not cluster and not helm'

## cluster-up / cluster-down: the simulated Kubernetes control plane of tests/cluster
cluster-up:
	tests/cluster/cluster.sh up
cluster-down:
	tests/cluster/cluster.sh down

## tools: helm and kubectl into .cache/bin
tools:
	tests/cluster/tools.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache
