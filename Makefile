# riskguard — one entry point for every routine task. Each target builds .venv on its own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 12

.PHONY: demo test check lint typecheck bench bench-http eval services clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/riskguard demo --seconds $(DEMO_SECONDS)

services:
	bash scripts/ensure-services.sh

test: $(STAMP) services
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python bench/engine.py

bench-http: $(STAMP) services
	bash scripts/ensure-tools.sh wrk
	$(BIN)/python bench/http.py

eval: $(STAMP)
	$(BIN)/python bench/detection.py --seeds 1 2 3 4 5
	$(BIN)/python bench/gateway_scene.py --seeds 1 2 3 4 5
	$(BIN)/python bench/models.py --data ../shared/datasets

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
