# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo

.PHONY: install demo test bench clean

$(BIN)/jaxtransfer: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/jaxtransfer

demo: install
	$(BIN)/jaxtransfer demo --workdir=$(WORKDIR)

test: install
	$(BIN)/python -m pytest -q -n auto

bench: install
	$(BIN)/python -m experiments.benchmarks.run --out=runs/bench

clean:
	rm -rf $(VENV) runs
