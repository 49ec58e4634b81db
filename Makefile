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

test: install lint
	$(VENV)/bin/pytest -q

demo: install
	$(VENV)/bin/itergen demo

# Modules the type check covers (the public, nerfstudio-facing ones that are type-clean; docs/architecture.md).
TYPED := itergen_ns/io.py itergen_ns/compat.py itergen_ns/errors.py itergen_ns/data/camera_utils.py \
	itergen_ns/data/discovery.py itergen_ns/snapshots/format.py itergen_ns/render/warp.py itergen_ns/models/rendering.py \
	itergen_ns/diffusion/sampling.py itergen_ns/diffusion/clip_metrics.py itergen_ns/itergen/generation.py \
	itergen_ns/itergen/datamanager.py itergen_ns/itergen/pipeline.py itergen_ns/itergen/generator.py

lint: install
	$(VENV)/bin/ruff check itergen_ns tests scripts
	$(VENV)/bin/ruff format --check itergen_ns tests scripts
	$(VENV)/bin/mypy --ignore-missing-imports --follow-imports=silent $(TYPED)

bench: install
	$(PY) scripts/bench_rasterizer.py
