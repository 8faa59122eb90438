# PruneLab: `make run` (set up and start the server with a demo) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
ONNX2TORCH_PIN := onnx2torch==1.5.15
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?= -n 2

.PHONY: run test setup lint fmt clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first and pinned: an unpinned torch pulls a CUDA build of several GB.
$(VENV)/.torch-stamp: | $(PY)
	$(PIP) install -q $(TORCH_PIN)
	touch $@

# onnx2torch with --no-deps: its torchvision requirement would replace torch.
$(VENV)/.install-stamp: pyproject.toml $(VENV)/.torch-stamp
	$(PIP) install -q -e '.[dev,ray]'
	$(PIP) install -q --no-deps $(ONNX2TORCH_PIN)
	@$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch ' + v + ' replaced the pinned 2.13.0')"
	touch $@

setup: $(VENV)/.install-stamp

run: setup
	$(VENV)/bin/prunelab db upgrade
	$(VENV)/bin/prunelab serve --demo --host $(HOST) --port $(PORT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo --no-cache

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
