# Every target sets itself up: a fresh machine needs only python3 (>= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean hud-venv vendor-js art-venv vf-venv

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

# The ART adapter's tests (hud_ray.rl.adapters.art) check groups against OpenPipe ART's own
# classes, which need Python >= 3.12: a venv of their own (no torch, no weights; ~2 min).
ART_VENV  := .venv-art
ART_STAMP := $(ART_VENV)/.installed
# python3.12/3.13 on PATH, else a pyenv-installed one (pyenv's root, or ~/.pyenv).
PYTHON312 ?= $(firstword $(foreach p,python3.12 python3.13,$(shell $(p) -c 'print(1)' >/dev/null 2>&1 && echo $(p))) $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.1[23]*/bin/python) $(wildcard $(HOME)/.pyenv/versions/3.1[23]*/bin/python))

$(ART_STAMP):
	@test -n "$(PYTHON312)" || { echo "art-venv: no python >= 3.12 found; set PYTHON312=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON312) -m venv $(ART_VENV)
	$(ART_VENV)/bin/pip install --quiet openpipe-art==0.5.23
	touch $(ART_STAMP)

art-venv: $(ART_STAMP)

# The same for the verifiers adapter (hud_ray.rl.adapters.verifiers): verifiers' own
# Episode classes, Python >= 3.12 (~2 min, no torch).
VF_VENV  := .venv-verifiers
VF_STAMP := $(VF_VENV)/.installed

$(VF_STAMP):
	@test -n "$(PYTHON312)" || { echo "vf-venv: no python >= 3.12 found; set PYTHON312=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON312) -m venv $(VF_VENV)
	$(VF_VENV)/bin/pip install --quiet verifiers==0.4.0
	touch $(VF_STAMP)

vf-venv: $(VF_STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/hud-ray demo

test: $(STAMP) $(ART_STAMP) $(VF_STAMP)
	$(BIN)/ruff check .
	RAY_AUTH_MODE=disabled $(BIN)/pytest -q -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(ART_VENV) $(VF_VENV) runs .pytest_cache

# Re-fetch the viewer's pinned JS (npm pack NAME@VERSION) and check each file's sha256.
vendor-js: $(STAMP)
	$(BIN)/python -m hud_ray.view.vendor
