# Two commands set everything up on a fresh machine:
#   make demo   -- install, then run the main job end to end offline (no downloads, no GPU)
#   make test   -- install, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch: an unpinned torch pulls several GB of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-slow bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[train,eval,dev]"
	touch $@

demo: setup
	$(VENV)/bin/userlm demo --out demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf demo .pytest_cache
