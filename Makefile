# Two commands for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COMFY := .cache/ComfyUI
export OMP_NUM_THREADS ?= 1

.PHONY: setup system-deps demo test bench clean

setup: system-deps $(VENV)/.fmcgm-installed $(COMFY)/.fmcgm-setup

# System programs: Graphviz (the graph viewer's layout; without it a simpler layout is used)
# and Debian's Chromium (the browser tests drive it with Playwright, whose own browser
# download is not available here). apt runs only when one is missing, and only as root.
system-deps:
	@if ! command -v dot >/dev/null || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz chromium >/dev/null; \
	  else \
	    echo "note: install graphviz and chromium (e.g. apt-get install graphviz chromium) for the full test suite" >&2; \
	  fi; \
	fi

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
