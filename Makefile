# cvh: two commands on a fresh machine.
#   make run    install into .venv and serve all three services on 127.0.0.1:50051 (SQLite)
#   make test   install into .venv and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test protos lint check-protos install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cvh serve

test: $(STAMP)
	$(BIN)/python tools/gen_protos.py --check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

protos: $(STAMP)
	$(BIN)/python tools/gen_protos.py

# buf lint (STANDARD rules, exceptions in protos/buf.yaml) with the buf of the dev dependencies.
lint: $(STAMP)
	cd protos && ../$(BIN)/buf lint

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
