# One command each: `make demo` runs the main job, `make test` the test suite.
# Both create/reuse a virtualenv outside the checkout (override with VENV=...) and install `.[dev]` into it.
VENV ?= $(HOME)/.cache/itergen_ns/venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.itergen-deps-$(shell sha1sum pyproject.toml | cut -c1-12)
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning costs 5-10x.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test demo lint bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

# Test files run on TEST_WORKERS processes (whole files per worker, so module fixtures are built once): most tests
# are single-threaded, so on 2 cores two workers take the suite from ~17 to ~12 minutes.
TEST_WORKERS ?= 2

test: install lint
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: install
	$(VENV)/bin/itergen demo

lint: install
	$(VENV)/bin/ruff check itergen_ns tests scripts
	$(VENV)/bin/ruff format --check itergen_ns tests scripts
	$(VENV)/bin/mypy  # the whole package; settings in pyproject.toml [tool.mypy]

bench: install
	$(PY) scripts/bench_rasterizer.py
