# Two commands on a fresh machine:  make quickstart   |   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel, installed before hpeft so that no dependency pulls a multi-GB CUDA build of torch.
TORCH  ?= torch==2.13.0
# Constraints: the versions the suite was proven with (make lock regenerates them). `make setup LOCK=` installs
# the newest versions pyproject.toml allows instead, as `HPEFT_DEPS=latest bash .ci/run` does to catch drift.
LOCK   ?= requirements/lock.txt
CONSTRAINTS := $(if $(LOCK),-c $(LOCK))

.PHONY: setup quickstart test bench lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[test]"
	touch $@

quickstart: setup
	$(BIN)/python -m hpeft.quickstart

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks.run

lock:
	PYTHON=$(PYTHON) TORCH=$(TORCH) requirements/make_lock.sh

clean:
	rm -rf runs data_cache wandb lightning_logs .pytest_cache
