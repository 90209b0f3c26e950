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

.PHONY: setup quickstart test test-slow test-all bench lock studies clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[test]"
	touch $@

quickstart: setup
	$(BIN)/python -m hpeft.quickstart

# The default run leaves out tests marked slow (whole trainings, SIGKILL resumes, multi-process runs) to stay
# lean; CI (.ci/run) runs both halves, `make test-all` runs everything in one go.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks.run

# The four seed studies at CPU scale, into studies_out/, and their results into docs/studies/ (see README, Studies).
STUDIES ?= seed000 seed002 seed003 seed004
STUDY_ARGS ?=
studies: setup
	for s in $(STUDIES); do \
		$(BIN)/hpeft study $$s --scale cpu $(STUDY_ARGS) || exit 1; \
		mkdir -p docs/studies/$$s-cpu && cp studies_out/$$s-cpu/study.json studies_out/$$s-cpu/results.md \
			studies_out/$$s-cpu/main.png docs/studies/$$s-cpu/ || exit 1; \
	done

lock:  # KEEP=1: keep the current pins, resolve only new dependencies
	PYTHON=$(PYTHON) TORCH=$(TORCH) requirements/make_lock.sh

clean:
	rm -rf runs data_cache wandb lightning_logs .pytest_cache
