# Two commands on a fresh machine:  make quickstart   |   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel, installed before hpeft so that no dependency pulls a multi-GB CUDA build of torch.
TORCH  ?= torch==2.13.0

.PHONY: setup quickstart test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

quickstart: setup
	$(BIN)/python -m hpeft.quickstart

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf runs data_cache wandb lightning_logs .pytest_cache
