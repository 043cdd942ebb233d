PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch is pinned so a bare `torch` requirement never pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install install-test demo test

install:
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e .

install-test: install
	$(PIP) install -q -e '.[test]'

demo: install
	$(PYTHON) -m mtbench.cli demo

test: install-test
	$(PYTHON) -m pytest
