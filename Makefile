# Two commands do everything on a fresh machine:
#   make run    set up, then run the default pipeline (dvc repro)
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test setup venv data dvc-init ui docs bench lint clean-outputs

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# One worker per core; a test file's tests stay on one worker (they share its module fixtures: a tiny project), the
# files handed out in the suite's own order, longest first (tests/conftest.py)
test: setup
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

setup: venv data dvc-init

# Virtual environment with the pinned, fully resolved dependency set (requirements.lock).
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==26.3
	$(BIN)/python -m pip install -q -r requirements.lock
	@touch $@

# Fashion-MNIST (the default dataset) from Debian's package when apt-get is available.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian package dataset-fashion-mnist"; \
		$(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null \
		|| ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else \
		echo "apt-get not available: the download stage will fetch Fashion-MNIST with torchvision"; \
	fi

dvc-init:
	@test -d .dvc || $(BIN)/dvc init -q $$(git rev-parse --git-dir >/dev/null 2>&1 || echo --no-scm)

# MLflow UI on the project's store (base.tracking_uri, or MLFLOW_TRACKING_URI): http://127.0.0.1:5000
ui: venv
	$(BIN)/python cli.py ui

# The documentation site (docs/, mkdocs.yml) into site/; a broken link or anchor fails the build.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/suite.py

lint: venv
	$(BIN)/ruff check .

# Remove pipeline outputs (not the MLflow store, not the committed study reports reports/<study>.md): the next
# `make run` starts from scratch.
clean-outputs:
	rm -rf data/prepared.npz data/noisy.npz data/corrected.npz models/*.pt models/*.npz models/checkpoints \
		reports/plots reports/curves reports/mentor reports/correction reports/*.json reports/*.png \
		reports/model_card.md
