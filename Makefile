# Two commands do all the set-up: `make demo` and `make test`. Each creates or updates the local
# virtual environment .venv; the stamp file makes a second run skip the install unless
# pyproject.toml or the lock file changed.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,server,dev

CHROMIUM := /usr/bin/chromium

.PHONY: demo test test-deploy lint venv clean browser postgresql

venv: $(STAMP)

$(STAMP): pyproject.toml deploy/constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c deploy/constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ptystream demo

# The dashboard's browser test drives Debian's chromium (Playwright's own browser download is
# not reachable here); installed once, as root or through sudo.
browser:
	@test -x $(CHROMIUM) || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# The facility test (tests/deploy/test_facility.py: PostgreSQL, tiled serve config, the 0MQ
# proxy, ptystream serve, about 45 s) is part of `make test`; `make test-deploy` runs it alone.
test: $(STAMP) browser postgresql
	$(VENV)/bin/python -m pytest -ra -n 2 --dist loadfile --durations=30

# Debian's PostgreSQL for the facility test, installed once like chromium above.
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql; }

test-deploy: $(STAMP) postgresql
	$(VENV)/bin/python -m pytest -ra -m deploy tests/deploy/test_facility.py

lint: $(STAMP)
	$(VENV)/bin/ruff check ptystream tests benchmarks
	$(VENV)/bin/ruff format --check ptystream tests benchmarks

clean:
	rm -rf $(VENV) demo-output
