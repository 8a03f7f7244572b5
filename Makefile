# Every target sets itself up: a fresh machine needs only python3 (>= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,notebook]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/hud-ray demo

test: $(STAMP)
	$(BIN)/ruff check hud_ray providers tests examples bench
	RAY_AUTH_MODE=disabled $(BIN)/pytest -q -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hud_ray providers tests examples bench

bench: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache
