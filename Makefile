.PHONY: install check test test-all coverage lint format docs docs-serve train tensorboard bench clean

PYTHON ?= python

install:  ## install the package with its dev tools (editable)
	$(PYTHON) -m pip install -e ".[dev]"

# the quick tier leaves out three kinds of test (pyproject.toml's markers); test-all runs everything: the in-process
# tests on two workers, then the ones that start processes and servers of their own, one at a time
QUICK = not slow and not process and not real_data

check:  ## is this environment ready? versions, CPU/GPU features, torchvision's operators, what DATA_DIR holds
	$(PYTHON) -m visiontrain.cli.main check

test:  ## the quick tier: every module's behaviour, in-process (~4 min on 2 CPU cores)
	$(PYTHON) -m pytest -n 2 -m "$(QUICK)" --durations=15

test-all:  ## everything: the quick tier, long runs, real data (DATA_DIR), real processes and servers (CI runs this)
	$(PYTHON) -m pytest -n 2 -m "not process" --durations=15
	$(PYTHON) -m pytest -m process --durations=15

# COVERAGE_FILE: the processes tests start (in folders of their own) write their data beside the project's, where
# pytest-cov combines them
coverage: export COVERAGE_FILE = $(CURDIR)/.coverage
coverage:  ## line coverage of src/ over everything (test-all's two parts), subprocesses included; report in htmlcov/
	rm -f .coverage .coverage.*
	$(PYTHON) -m pytest -n 2 -m "not process" --cov --cov-report=
	$(PYTHON) -m pytest -m process --cov --cov-append --cov-report=
	$(PYTHON) -m coverage report --skip-covered
	$(PYTHON) -m coverage html

lint:  ## every Python file of the project: ruff's checks and its formatting, nothing changed
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## reformat every Python file of the project
	$(PYTHON) -m ruff format .

docs:  ## build the documentation site into site/ (warnings are errors, as in CI)
	$(PYTHON) -m mkdocs build --strict

docs-serve:  ## the documentation site on http://127.0.0.1:8000, rebuilt on every change
	$(PYTHON) -m mkdocs serve --dev-addr 127.0.0.1:8000

train:  ## the default run: simple_cnn on MNIST
	$(PYTHON) train.py

tensorboard:  ## review every run (binds 127.0.0.1 only)
	tensorboard --logdir outputs --host 127.0.0.1

bench:  ## visiontrain vs plain PyTorch loops (classification, detection, segmentation) + CPU speed-ups; ~15 min, needs DATA_DIR
	$(PYTHON) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf outputs .pytest_cache .ruff_cache .coverage .coverage.* htmlcov site
