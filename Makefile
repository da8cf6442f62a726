# Two commands for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The ComfyUI versions the suite runs against (scripts/setup_comfyui.py knows how to get each):
# 0.3.75 with its frontend 1.32.9, and 0.33.0 (2026-08) with the newest frontend, 1.58.1.
LANES ?= 0.3.75 0.33.0
LANE_STAMPS := .cache/ComfyUI/.fmcgm-setup .cache/ComfyUI-0.33.0/.fmcgm-setup
PYTEST_ARGS ?=
export OMP_NUM_THREADS ?= 1

.PHONY: setup system-deps demo test bench workflows clean

setup: system-deps $(VENV)/.fmcgm-installed $(LANE_STAMPS)

# System programs: Graphviz (the graph viewer's layout; without it a simpler layout is used)
# and Debian's Chromium (the browser tests drive it with Playwright, whose own browser
# download is not available here). apt runs only when one is missing, and only as root; it
# waits for another apt or dpkg to finish (up to 15 minutes) instead of failing on its lock.
APT := apt-get -o DPkg::Lock::Timeout=900 -o Acquire::Retries=3
system-deps:
	@if ! command -v dot >/dev/null || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    for try in $$(seq 90); do $(APT) update -qq && break; echo "apt-get update: waiting for the apt lock ($$try)" >&2; sleep 10; done; \
	    DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq graphviz chromium >/dev/null; \
	  else \
	    echo "note: install graphviz and chromium (e.g. apt-get install graphviz chromium) for the full test suite" >&2; \
	  fi; \
	fi

$(VENV)/.fmcgm-installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-test.txt
	touch $@

.cache/ComfyUI/.fmcgm-setup: scripts/setup_comfyui.py $(VENV)/.fmcgm-installed
	$(PY) scripts/setup_comfyui.py --lane 0.3.75

.cache/ComfyUI-0.33.0/.fmcgm-setup: scripts/setup_comfyui.py $(VENV)/.fmcgm-installed
	$(PY) scripts/setup_comfyui.py --lane 0.33.0

demo: setup
	$(PY) scripts/demo.py

# The suite once per ComfyUI lane; fails if any lane fails (each lane still runs). Test modules
# that never import ComfyUI run in the first lane only (tests/conftest.py, COMFYUI_FREE).
test: setup
	@status=0; skip=0; for lane in $(LANES); do \
	  echo "=== ComfyUI $$lane ==="; start=$$(date +%s); \
	  FMCGM_COMFYUI_LANE=$$lane FMCGM_SKIP_COMFYUI_FREE=$$skip $(PY) -m pytest $(PYTEST_ARGS) || status=1; \
	  echo "=== ComfyUI $$lane: $$(( $$(date +%s) - start )) s ==="; skip=1; \
	done; exit $$status

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# Regenerate workflows/ with the real frontend (after changing a node's inputs or a definition).
workflows: setup
	$(PY) scripts/build_workflows.py

clean:
	rm -rf $(VENV) .cache test-artifacts demo-output
