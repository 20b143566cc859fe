# convexcnn — set-up and main jobs. Every target creates/reuses the virtual environment .venv.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: digits 3-vs-8, the whole training split (249 images), 1000 sampled patterns,
# solved by the first-order solver (dual augmented Lagrangian) vs Adam on the same network
# (5 seeds), one table. Override with DEMO_ARGS=...
DEMO_ARGS ?= --patterns 1000 --solver al --baseline-seeds 5 --baseline-epochs 3000
demo: $(STAMP)
	$(VENV)/bin/convexcnn fit --data digits --classes 3,8 $(DEMO_ARGS)

# Fast test suite (slow checks are marked and skipped; see test-slow).
test: $(STAMP)
	$(VENV)/bin/pytest -q

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
