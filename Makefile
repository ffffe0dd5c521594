# Two commands: `make run` (the responder on an embedded Prefect server) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install bytecode services bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The project's own modules compiled once: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every
# process would compile them again on import (about 0.27 s of a `responder up` start, measured with py-spy).
# Only changed files are compiled again; a stale one is simply not used.
PACKAGES := core deployments flows responder tasks
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q $(PACKAGES) >/dev/null

run: bytecode
	$(BIN)/responder up

# Installs what the tests need (Alertmanager, Prometheus, node_exporter, docker-compose v1) when missing, starts
# PostgreSQL and Redis when they are installed but stopped, then runs the whole suite.
# Test modules run on TEST_WORKERS processes (pytest-xdist), a module's tests on one of them: most of the
# suite waits on real processes (responder up, Prefect, Alertmanager), so 4 workers fit 2 cores (README: Tests).
TEST_WORKERS ?= 4
test: bytecode
	./scripts/test-services
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python bench/alert_to_first_task.py
	$(BIN)/python bench/intake.py
	$(BIN)/python bench/storm.py

clean:
	rm -rf $(VENV) .prefect .responder
