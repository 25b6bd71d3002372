# reachsafe — every target works as the first command on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PYTEST_FLAGS ?=

.PHONY: setup demo test test-all bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[robot,sim,trainer,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

demo: setup
	$(BIN)/reachsafe demo --out demo_out

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_FLAGS)

test-all: setup
	$(BIN)/python -m pytest -q -m "not hardware and not gpu" $(PYTEST_FLAGS)

bench: setup
	$(BIN)/python -m bench.run_all

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo_out .bench_out .pytest_cache
