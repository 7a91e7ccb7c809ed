# Two commands do all the set-up: `make demo` and `make test`. Both create .venv and install the pinned
# dependencies on first use (torch first, so pip never swaps in a CUDA build on a CPU-only machine).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo demo-swav test install system-tools clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$$(grep '^torch==' requirements.txt)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: $(STAMP)
	$(PY) albert/run_demo.py $(DEMO_ARGS)

demo-swav: $(STAMP)
	$(PY) swav/run_demo.py $(DEMO_ARGS)

test: $(STAMP) system-tools
	$(PY) -m pytest $(PYTEST_ARGS)

# The network lab (collab/lab/netlab.py) needs iproute2 and iptables; as root, install them when missing
# (without root the lab's tests are skipped with a reason).
system-tools:
	@if [ "$$(id -u)" = 0 ] && ! { command -v iptables && command -v ip && command -v tc; } >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null; \
	fi

clean:
	rm -rf outputs .pytest_cache
