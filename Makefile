# diff4splat — `make help` lists the targets. `make train` and `make test` install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# Installed first and pinned so a CPU machine never pulls CUDA builds; on a GPU box e.g. TORCH="torch==2.11.0".
TORCH ?= torch==2.13.0
# A pip constraints file applied to every install, e.g. CONSTRAINTS=requirements/gpu-constraints.txt on a GPU machine
# (the versions behind the recorded GPU results).
CONSTRAINTS ?=
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
EXTRAS ?= dev,slurm,viewer
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-gpu test-all lint format train bench clean

help: ## Show this list of targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements/dev-no-deps.txt $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_C) "$(TORCH)"
	$(PY) -m pip install --quiet $(PIP_C) -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps -r requirements/dev-no-deps.txt
	@touch $(STAMP)

install: $(STAMP) ## Create .venv: torch first (TORCH=, default torch==2.13.0), then the project + extras (CONSTRAINTS=: pins)

lint: $(STAMP) ## Lint and check formatting with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Format and auto-fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) lint ## Lint, then the fast CPU test suite (the CI command)
	$(PY) -m pytest -q

test-slow: $(STAMP) ## The slow CPU tests (`slow` marker: multi-process FSDP/DDP runs, ...); CI runs them after `make test`
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP) ## The GPU tests (`gpu` marker); run on a CUDA machine
	$(PY) -m pytest -q -m gpu

test-all: $(STAMP) ## Every test, slow and GPU ones included
	$(PY) -m pytest -q -m ""

train: $(STAMP) ## Train the embedded default (experiment=smoke: tiny LRDM, synthetic 4D scenes, CPU); ARGS="k=v" overrides
	$(PY) -m diff4splat.train experiment=smoke $(ARGS)

bench: $(STAMP) ## Run the benchmarks in experiments/benchmarks (GPU ones need a CUDA machine)
	@for f in experiments/benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean: ## Remove caches and run outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache outputs logs wandb build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
