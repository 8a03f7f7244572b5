# Every target sets itself up: a fresh machine needs only python3 (>= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean hud-venv vendor-js

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,view,notebook,modal,daytona,docker,hud,openai]"
	touch $(STAMP)

setup: $(STAMP)

# One interpreter: hud_ray and hud 0.6.21 (the `[hud]` extra) resolve together with ray,
# modal and daytona; hud's own server, agents and `Taskset.run` are tested from it.
# `hud-venv` is kept as an alias for scripts that still call it.
hud-venv: setup

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

# Re-fetch the viewer's pinned JS (npm pack NAME@VERSION) and check each file's sha256.
vendor-js: $(STAMP)
	$(BIN)/python -m hud_ray.view.vendor
