# embedding-images: one entry point for set-up, tests, the local control plane and benchmarks.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: setup test test-unit test-node cluster-up cluster-down tools bench clean demo

## setup: create .venv and install the project with its test dependencies and testkit/ (the
## test-support package: stand-ins, process helpers, random-weight models; never in an image)
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml testkit/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' -e ./testkit
	touch $@

## test: the whole suite (builds and starts the local control plane and helm on first use)
test: setup
	$(PYTEST) -q

## test-unit: only the tests that need neither the control plane nor helm
test-unit: setup
	$(PYTEST) -q -m 'not cluster and not helm'

## test-node: only the tests that run real pods on the real node (marker `node`)
test-node: setup
	$(PYTEST) -q -m node

## cluster-up / cluster-down: the Kubernetes control plane of tests/cluster with its simulated
## nodes and one real node (tests/cluster/node.sh; EMBEDDING_IMAGES_NODE=0 leaves it out)
cluster-up:
	tests/cluster/cluster.sh up
cluster-down:
	tests/cluster/cluster.sh down

## demo: the local cluster with its real node, the images built and imported, the chart, the
## examples (the CPU reranker in a real pod), a request by DNS name, the README's Gateway curl
## examples through a port-forward and scale from zero, no Docker needed (KEEP=1 leaves the
## cluster up; DEMO_ARGS=--help)
demo: setup
	$(PY) demo/demo.py $(DEMO_ARGS)

## tei: TEI's router (text-embeddings-router 1.9.3, candle + ORT, http) for CPU, built with cargo
## from ../shared/vendor/tei (else the v1.9.3 tag) into the machine-wide cache
## (EMBEDDING_IMAGES_CACHE, default /var/cache/embedding-images, then tei/); prints its folder.
## The first build on a machine takes about 15 minutes on two cores; later ones under a second.
.PHONY: tei
tei:
	images/tei/build.sh

## tools: helm and kubectl into .cache/bin
tools:
	tests/cluster/tools.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache

## images: build every image variant of charts/embedding-images/files/variants.yaml with docker
## buildx, or with podman when no Docker engine answers (ENGINE=docker|podman forces one).
## DRY_RUN=1 prints the commands. REGISTRY, PUSH=1, PLATFORM, EMBEDDING_MODEL,
## ONLY=embedding,reranker,operator,gateway, VARIANT=cpu, PYTHON_IMAGE, TORCH_INDEX_URL:
## see images/README.md
.PHONY: images images-base kind-up
IMAGES_FLAGS = $(strip $(if $(filter-out 0,$(DRY_RUN)),--dry-run) $(if $(filter-out 0,$(PUSH)),--push) \
  $(if $(REGISTRY),--registry '$(REGISTRY)') $(if $(PLATFORM),--platform '$(PLATFORM)') \
  $(if $(EMBEDDING_MODEL),--embedding-model '$(EMBEDDING_MODEL)') $(if $(ONLY),--only '$(ONLY)') \
  $(if $(ENGINE),--engine '$(ENGINE)') $(foreach v,$(subst $(comma), ,$(VARIANT)),--variant '$(v)') \
  $(if $(PYTHON_IMAGE),--python-image '$(PYTHON_IMAGE)') \
  $(if $(TORCH_INDEX_URL),--torch-index-url '$(TORCH_INDEX_URL)'))
comma := ,
images: setup
	$(PY) images/build.py $(IMAGES_FLAGS)

## images-base: the Python base image made from Debian's archive with mmdebstrap (for podman
## builds on machines that cannot pull python:*-slim), cached in .cache/images/base
images-base: setup
	$(PY) images/debian_base.py

## kind-up: a kind cluster with the chart, the operator and the CPU examples, then one request
## to each (needs Docker and kind). DRY_RUN=1 prints the steps.
kind-up: setup $(if $(filter-out 0,$(DRY_RUN)),,tools)
	PATH="$(CURDIR)/.cache/bin:$$PATH" $(PY) images/kind_up.py $(if $(filter-out 0,$(DRY_RUN)),--dry-run)
