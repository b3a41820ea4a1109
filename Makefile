# One command to see the job work (`make demo`), one to test it (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

$(BIN)/job: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,postgres]'
	touch $(BIN)/job

install: $(BIN)/job

demo: install
	$(BIN)/python -m job.demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

LINTED := job tests migrations $(wildcard bench)

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .sandbox *.egg-info
