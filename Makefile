# channelshift: `make run` starts the all-in-one service, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check eval clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	CHANNELSHIFT_DEMO_DATES=$${CHANNELSHIFT_DEMO_DATES:-true} $(BIN)/channelshift serve

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check services tests bench

typecheck: $(STAMP)
	$(BIN)/mypy services
	$(BIN)/lint-imports

eval: $(STAMP)
	$(BIN)/channelshift rules eval $${CHANNELSHIFT_CORPUS_DIR:-../shared/corpus}/citizen-mails

check: lint typecheck test

clean:
	rm -rf $(VENV) var
