# Two commands: `make run` (the responder on an embedded Prefect server) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install services bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/responder up

# Installs what the tests need (Alertmanager, Prometheus, node_exporter, docker-compose v1) when missing, starts
# PostgreSQL and Redis when they are installed but stopped, then runs the whole suite.
test: $(STAMP)
	./scripts/test-services
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/alert_to_first_task.py

clean:
	rm -rf $(VENV) .prefect .responder
