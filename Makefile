# Claire de Binaire: `make run` replays the bundled sample through the five services on the
# embedded Redis and PostgreSQL and prints the report; `make test` runs lint, types and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run backtest test lint typecheck unit bench clean image compose-up compose-down \
        compose-smoke

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/cdb up --report reports/run.json --html reports/run.html

backtest: install
	$(BIN)/cdb backtest services/replay/sample --report reports/backtest.json

lint: install
	$(BIN)/ruff check services operator tests benchmarks

typecheck: install
	$(BIN)/mypy --strict

unit: install
	$(BIN)/pytest -q tests/unit

test: lint typecheck
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m benchmarks.bus
	$(BIN)/python -m benchmarks.backtest
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.sweep
	$(BIN)/python -m benchmarks.optimize

# -- containers (docker-compose.yml; see the README's Compose section) ----------------------
COMPOSE ?= docker compose
IMAGE   ?= claire-de-binaire:0.1.0

image:
	docker build -t $(IMAGE) .

compose-up:
	$(COMPOSE) up -d --build --wait

compose-down:
	$(COMPOSE) --profile replay down

# Builds the image and runs the whole stack on the container sandbox (podman + Compose CLI),
# with health, metrics, hardening, replay, crash and restart checks; always tears down.
compose-smoke: install
	$(BIN)/python -m tests.deploy.compose_smoke

clean:
	rm -rf .cdb reports .pytest_cache .mypy_cache .ruff_cache
