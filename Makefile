# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: install test lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check .

# Runs every test on SQLite, and on PostgreSQL too when one is reachable (see README).
test: install lint
	$(PY) -m pytest -q

demo: install
	$(PY) -m gateway.demo.runner

bench: install
	$(PY) bench/proxy_overhead.py

clean:
	rm -rf $(VENV) var/*.db* .pytest_cache
