# Set-up is idempotent: .venv is created once, torch 2.13.0 (CPU build when no CUDA
# is present) is installed before the project so pip never pulls a CUDA wheel.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?= --sites 6 --order random

.PHONY: setup run test lint smoke bench docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install "torch==2.13.0"; \
	else \
		$(BIN)/pip install --retries 1 --timeout 20 \
			--extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"; \
	fi
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/smg-sim run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

smoke: $(STAMP)
	$(BIN)/smg-sim run --profile smoke $(ARGS)

# Timing targets live here, not in tests: step costs of finetune, smd_replay_matched and smg at
# stages 2 and 6, then one quick smg run timed by phase (targets: <= 180 s after Ray start,
# smg <= 2x finetune); the figures go to runs/bench.json.
bench: $(STAMP)
	mkdir -p runs
	$(BIN)/smg-sim bench --run smg --out runs/bench.json

# The documentation site (mkdocs.yml; sources in docs/site/) into build/site/: first the pages
# and files generated from the code and the committed results (the CLI reference from the
# argument parser, the results pages' plots, their tables rewritten from docs/compare/ and
# docs/runs/, README.md's too), then a strict build (a broken link or an unlisted page fails).
docs: $(STAMP)
	$(BIN)/python docs/cli_reference.py
	$(BIN)/python docs/compare/render.py site
	$(BIN)/python docs/compare/render.py render
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache build
