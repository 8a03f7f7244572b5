# Every target sets itself up: a fresh machine needs only python3 (>= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean hud-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,notebook,modal,daytona,docker]"
	touch $(STAMP)

setup: $(STAMP)

# hud itself lives in its own venv, never in .venv: the interop tests run hud's real env
# server and client from it (tests/test_hud_interop.py; HUD_PYTHON overrides the path).
HUD_VENV  := .venv-hud
HUD_STAMP := $(HUD_VENV)/.installed

$(HUD_STAMP):
	$(PYTHON) -m venv $(HUD_VENV)
	$(HUD_VENV)/bin/pip install --quiet --upgrade pip
	$(HUD_VENV)/bin/pip install --quiet "hud==0.6.21" "typer<0.29"
	touch $(HUD_STAMP)

hud-venv: $(HUD_STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/hud-ray demo

test: $(STAMP)
	$(BIN)/ruff check .
	RAY_AUTH_MODE=disabled $(BIN)/pytest -q -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache
