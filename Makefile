.PHONY: install test test-all lint format train tensorboard bench clean

PYTHON ?= python

install:  ## install the package with its dev tools (editable)
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the fast suite (a few minutes on 2 CPU cores); real-data tests run when DATA_DIR holds the data
	$(PYTHON) -m pytest -m "not slow" --durations=10

test-all:  ## everything, including the slow end-to-end runs
	$(PYTHON) -m pytest --durations=10

lint:  ## every Python file of the project: ruff's checks and its formatting, nothing changed
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## reformat every Python file of the project
	$(PYTHON) -m ruff format .

train:  ## the default run: simple_cnn on MNIST
	$(PYTHON) train.py

tensorboard:  ## review every run (binds 127.0.0.1 only)
	tensorboard --logdir outputs --host 127.0.0.1

bench:  ## visiontrain vs plain PyTorch loops (classification, detection, segmentation) + CPU speed-ups; ~15 min, needs DATA_DIR
	$(PYTHON) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf outputs .pytest_cache .ruff_cache
