# Everything installs itself into .venv on first use: a fresh machine needs only
# Python 3.11+ and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install browser prometheus demo up test unit lint asyncapi clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

## the whole system with sample data and a live progress table (Ctrl-C stops it)
demo: install
	$(BIN)/waybill up --demo

## the whole system, no sample data
up: install
	$(BIN)/waybill up

## Debian's Chromium for the browser tests (Playwright drives it; no browser download)
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "note: $(CHROMIUM) is missing and only root can install it: the browser tests will fail"; \
	fi

## Debian's Prometheus and promtool for the alert-rule and scrape tests
prometheus:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's prometheus for the monitoring tests"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
	else \
		echo "note: prometheus and promtool are missing and only root can install them: the monitoring tests will fail"; \
	fi

## the full test suite against the real (embedded) broker and PostgreSQL
test: install browser prometheus
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services waybill

asyncapi: install
	$(BIN)/waybill asyncapi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
