# make train        train the default recipe on the bundled corpus (creates .venv on first use)
# make test         run the test suite (what CI runs first; 23 minutes on 2 shared cores)
# make test-slow    the longer tests: crash, multi-process, sweeps, the README's commands (46 minutes on 2 shared cores; CI runs them after make test)
# make bench        print the benchmark ratios
# make lint         ruff: unused imports, undefined names, import order
# make tensorboard  open TensorBoard on runs/

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The light CPU build of PyTorch; pip finds it on this machine's disk. Set TORCH_SPEC= (empty)
# on a GPU machine to let pip pick the build that matches pyproject's range.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-slow test-all bench lint tensorboard clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_SPEC),$(PY) -m pip install --quiet "$(TORCH_SPEC)")
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m voicetrain $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
