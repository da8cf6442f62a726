# Two commands for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COMFY := .cache/ComfyUI
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test bench clean

setup: $(VENV)/.fmcgm-installed $(COMFY)/.fmcgm-setup

$(VENV)/.fmcgm-installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-test.txt
	touch $@

$(COMFY)/.fmcgm-setup: scripts/setup_comfyui.py $(VENV)/.fmcgm-installed
	$(PY) scripts/setup_comfyui.py

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(COMFY) test-artifacts demo-output
