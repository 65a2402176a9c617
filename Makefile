# Inkwell: `make run` serves the API; `make test` runs the suite embedded, then against the services.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
TEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run migrate seed openapi test test-embedded test-services lint format lock bench bench-scale clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: $(BIN)/uv pyproject.toml uv.lock
	$(BIN)/uv sync --frozen --inexact --quiet
	@touch $@

install: $(VENV)/.installed  ## Create .venv with the locked dependencies

migrate: install  ## Apply the database migrations
	$(BIN)/python -m app migrate

seed: migrate  ## Add fake data: 50 users and 1,000 posts (python -m app seed --help for more)
	$(BIN)/python -m app seed --users 50 --posts 1000

openapi: install  ## Write the OpenAPI document to openapi.json
	$(BIN)/python -m app openapi -o openapi.json

run: migrate  ## Serve the API on http://127.0.0.1:8000 (HOST/PORT override)
	$(BIN)/python -m app run

test: test-embedded test-services  ## Run the suite embedded (SQLite, memory), then on PostgreSQL + Redis

test-embedded: install  ## The suite embedded only (SQLite, memory stores, in-process jobs)
	INKWELL_TEST_MODE=embedded $(BIN)/pytest $(TEST_ARGS)

test-services: install  ## The suite on PostgreSQL, Redis and a Celery worker only
	INKWELL_TEST_MODE=services $(BIN)/pytest $(TEST_ARGS)

lint: install  ## ruff, ruff format --check and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install  ## Format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock: $(BIN)/uv  ## Re-lock dependencies and export requirements*.txt
	$(BIN)/uv lock
	$(BIN)/uv export --quiet --frozen --no-dev --no-emit-project -o requirements.txt
	$(BIN)/uv export --quiet --frozen --only-dev --no-emit-project -o requirements-dev.txt

bench: install  ## Every benchmark figure: the HTTP ratios to hello-world, then the 1k-vs-1M page costs
	$(BIN)/python bench/run.py
	$(BIN)/python bench/scale.py

bench-scale: install  ## Page costs at 1,000 and 1,000,000 posts (PostgreSQL) and 100,000 (SQLite)
	$(BIN)/python bench/scale.py

clean:  ## Remove the virtual environment and local data
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
