SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
BUF := $(VENV)/node_modules/.bin/buf
BUF_VERSION := 1.75.0
# Debian's Chromium: the dashboard's browser tests drive it with Playwright (whose own
# browser downloads come from a CDN that CI cannot reach).
CHROMIUM := /usr/bin/chromium
TUNEWIRE_HOME ?= .tunewire
export TUNEWIRE_HOME

.PHONY: help run test test-slow lint proto bench bench-quick bench-gpu demo clean chromium

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The environment: a venv with the pinned CPU torch, and buf from npm inside it.
$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c .ci/constraints.txt -e '.[dev]'
	# Node's gRPC packages, for the test that drives the API from another language.
	npm install --silent --no-audit --no-fund --prefix $(VENV) \
	  @grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(VENV) @bufbuild/buf@$(BUF_VERSION)

$(CHROMIUM):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo -E) \
	  apt-get install -y -qq chromium

chromium: $(CHROMIUM) ## install Debian's chromium for the dashboard's browser tests (root or sudo)

run: $(VENV)/.installed ## serve gRPC (:50051) and REST (:8080), creating tiny-llama if missing
	$(VENV)/bin/tunewire models init-tiny --if-missing
	$(VENV)/bin/tunewire up

test: lint $(CHROMIUM) ## lint, then the test suite (fast, CPU)
	$(PY) -m pytest -q -m "not slow" --durations=15

test-slow: $(VENV)/.installed ## the larger runs of the slow suites
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed $(BUF) ## ruff, buf lint, buf format, generated-code drift
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(BUF) lint
	$(BUF) format --diff --exit-code
	rm -rf .gen-check && mkdir .gen-check
	$(BUF) generate --output .gen-check
	diff -r --exclude=__init__.py --exclude=__pycache__ --exclude='*.proto' \
	  .gen-check/protos/tunewire protos/tunewire \
	  || { echo "generated code does not match the protos: run 'make proto'"; exit 1; }
	rm -rf .gen-check

proto: $(VENV)/.installed $(BUF) ## regenerate Python code from the protos
	$(BUF) format --write
	$(BUF) generate

bench: $(VENV)/.installed ## benchmarks vs what users would run instead; writes bench/RESULTS.md
	$(PY) -m bench

bench-quick: $(VENV)/.installed ## every benchmark in seconds (CI: catches rot; figures mean nothing)
	$(PY) -m bench --quick

# GPU benchmarks get a venv of their own: every pin of CI's but torch's, whose CPU build
# gives way to the CUDA build PyPI serves for Linux.
GPU_VENV := .venv-gpu
$(GPU_VENV)/.installed: pyproject.toml .ci/constraints.txt
	python3 -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	grep -v '^torch==' .ci/constraints.txt > $(GPU_VENV)/constraints.txt
	$(GPU_VENV)/bin/python -m pip install --quiet -c $(GPU_VENV)/constraints.txt -e '.[dev,gpu]'
	touch $@

bench-gpu: $(GPU_VENV)/.installed ## on a CUDA GPU: training tok/s and MFU vs HF and TRL, generation; writes bench/RESULTS-gpu.md
	$(GPU_VENV)/bin/python -m bench --gpu training generation

demo: $(VENV)/.installed ## run the README's CLI walk-through as written, on a server of its own
	$(PY) -m pytest -q -s -p no:cacheprovider tests/test_readme.py

clean: ## remove the venv and local data
	rm -rf $(VENV) $(GPU_VENV) .tunewire .gen-check
