# Two commands matter: `make run` and `make test`. Both set up .venv from nothing first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run regression test lint format bench clean

setup: $(STAMP)

# Re-installs only when the dependency declarations change; otherwise a no-op.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# The main job: train the LM on CPython's documentation, restore it, print figures and a sample.
run: setup
	$(PY) -m experiments.train_sota --backend jax

# The original regression job (a short transformer regression).
regression: setup
	$(PY) -m experiments.main

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy jaxml torchref experiments mapreduce

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Two pytest-xdist workers that steal tests from each other (a module fixture may be built once
# per worker): on the 2-core machine the 1,042 tests take 10-12 minutes, 14.5+ serially.
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest tests parity -n $(TEST_WORKERS) --dist worksteal

bench: setup
	$(PY) -m experiments.bench $(BENCH)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
