# Claire de Binaire: `make run` replays the bundled sample through the five services on the
# embedded Redis and PostgreSQL and prints the report; `make test` runs lint, types and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run backtest test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/cdb up --report reports/run.json

backtest: install
	$(BIN)/cdb backtest services/replay/sample --report reports/backtest.json

lint: install
	$(BIN)/ruff check services tests benchmarks

typecheck: install
	$(BIN)/mypy --strict services

unit: install
	$(BIN)/pytest -q tests/unit

test: lint typecheck
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m benchmarks.bus
	$(BIN)/python -m benchmarks.backtest
	$(BIN)/python -m benchmarks.pipeline

clean:
	rm -rf .cdb reports .pytest_cache .mypy_cache .ruff_cache
