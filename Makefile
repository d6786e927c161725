# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: install test lint demo bench clean lock wheel

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

# Governed vs bare proxy against a near-free upstream (nginx) and the sample service.
bench: install
	$(PY) bench/proxy_overhead.py --upstream static
	$(PY) bench/proxy_overhead.py --upstream sample

# The runtime dependencies pinned with hashes (the Dockerfile installs from it).
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
	  -o requirements/runtime.lock

wheel: install
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) var/*.db* .pytest_cache
