# mabrouter: `make demo` runs the main job end to end; `make test` runs lint, types and the test suite;
# `make test-fast` only the unit tests (no Redis, no processes: seconds).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint typecheck pytest bench calibration protos system-deps test-deps clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mabrouter needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# What the demo needs beyond Python: redis-server.
system-deps:
	@scripts/ensure_system_deps.sh

# What the tests need on top: openssl, node (the Node example), promtool (the alert rules).
test-deps:
	@MABROUTER_NEED_NODE=1 MABROUTER_NEED_PROMTOOL=1 scripts/ensure_system_deps.sh

demo: $(BIN)/.installed system-deps
	$(BIN)/mabrouter demo

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/ruff format --check src tests benchmarks scripts examples

typecheck: $(BIN)/.installed
	$(BIN)/mypy

pytest: $(BIN)/.installed test-deps
	$(BIN)/pytest -q

test: lint typecheck pytest

# tests/unit only: no redis-server, no sockets, no subprocesses (tests/README.md).
test-fast: $(BIN)/.installed
	$(BIN)/pytest -q tests/unit

# ~10 minutes: decision cost, router vs the bare gRPC floor (h2load), in-process vs sidecar, outcomes/s,
# regret vs MABWiser.
bench: $(BIN)/.installed
	@MABROUTER_NEED_H2LOAD=1 scripts/ensure_system_deps.sh
	$(BIN)/python benchmarks/bench_decide.py
	$(BIN)/python benchmarks/bench_grpc.py
	$(BIN)/python benchmarks/bench_embedded.py
	$(BIN)/python benchmarks/bench_handler_parts.py
	$(BIN)/python benchmarks/bench_outcomes.py
	$(BIN)/python benchmarks/regret.py
	$(BIN)/python benchmarks/contextual_regret.py

# ~20 minutes: the full calibration suite (docs/statistics.md's tables; `make test` runs a reduced one).
calibration: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_calibration.py --docs docs/statistics.md

protos: $(BIN)/.installed
	PATH=$(BIN):$$PATH $(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
