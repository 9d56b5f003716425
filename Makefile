# Two commands for newcomers: `make demo` and `make test`. Each sets itself up:
# checks prerequisites, creates .venv/, installs the project, builds (once) or
# reuses the cached cluster binaries (~/.cache/modelfleet, never in the repo).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modelfleet-installed
PYTEST_ARGS ?=

.PHONY: test demo prereqs venv binaries unit integration integration-process integration-cluster e2e lint format crds down clean

test: prereqs venv binaries image-modelfleet
	$(PY) -m modelfleet.cli crds check --out crds
	$(VENV)/bin/ruff check operator worker_image common devtools tests bench
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS) tests

demo: prereqs venv binaries
	$(PY) -m modelfleet_dev.demo

prereqs:
	@PYTHON=$(PYTHON) bash scripts/prereqs.sh

venv: $(STAMP)

$(STAMP): pyproject.toml devtools/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[worker,dev]' -e ./devtools
	@touch $(STAMP)

binaries: venv
	$(PY) -m modelfleet.cli dev build

# Container images as OCI archives in dist/images/, no Docker daemon (buildah on a
# Debian base from mmdebstrap; scripts/images.sh). `make test` builds and proves the
# operator/router image (a few minutes cold); the worker image (torch: gigabytes)
# is built and proven by `make test-images` only, which also rebuilds the
# operator/router image from scratch and checks it gives the same layers.
.PHONY: images image-modelfleet image-worker test-images
images: prereqs
	bash scripts/images.sh modelfleet worker

image-modelfleet: prereqs
	bash scripts/images.sh modelfleet

image-worker: prereqs
	bash scripts/images.sh worker

test-images: prereqs venv binaries images
	MODELFLEET_TEST_WORKER_IMAGE=1 MODELFLEET_TEST_IMAGE_REBUILD=1 \
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS) \
		tests/integration/process/test_images_router.py \
		tests/integration/process/test_images_worker.py \
		tests/integration/cluster/test_images_operator.py \
		tests/integration/process/test_images_reproducible.py

unit: venv
	$(PY) -m pytest -p no:cacheprovider tests/unit

integration: venv binaries
	$(PY) -m pytest -p no:cacheprovider tests/integration

# Process-level tier: real servers on loopback, no Kubernetes.
integration-process: venv
	$(PY) -m pytest -p no:cacheprovider tests/integration/process

# Cluster tier: the real local control plane.
integration-cluster: venv binaries
	$(PY) -m pytest -p no:cacheprovider tests/integration/cluster

e2e: venv binaries
	$(PY) -m pytest -p no:cacheprovider tests/e2e

lint: venv
	$(VENV)/bin/ruff format --check operator worker_image common devtools tests bench
	$(VENV)/bin/ruff check operator worker_image common devtools tests bench
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format operator worker_image common devtools tests bench
	$(VENV)/bin/ruff check --fix operator worker_image common devtools tests bench

crds: venv
	$(PY) -m modelfleet.cli crds generate --out crds
	$(PY) -m modelfleet.cli crds generate --out charts/modelfleet/crds
	$(PY) -m modelfleet.cli crds docs --out docs/api-reference.md

down: venv
	$(PY) -m modelfleet.cli dev down

clean: down
	rm -rf $(VENV)
