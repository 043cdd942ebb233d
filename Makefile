PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch is pinned so a bare `torch` requirement never pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
# The optional compiled core (mtbench/compiled.py): Cython compiles the simulator's and the tiers' control plane
# from the same .py files; without Cython or a C compiler everything runs as plain Python.
CYTHON_PIN ?= cython==3.3.1

.PHONY: install install-test compile demo test

install:
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e .

install-test: install
	$(PIP) install -q -e '.[test]'

demo: install
	$(PYTHON) -m mtbench.cli demo

compile:
	$(PIP) install -q $(CYTHON_PIN) || echo "compile: Cython not installed, the compiled core is not built (pure Python)"
	$(PYTHON) setup.py -q build_ext --inplace
	$(PYTHON) -c "from mtbench.compiled import summary; print('compiled core:', summary())"

test: install-test compile
	$(PYTHON) -m pytest
