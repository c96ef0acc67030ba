# make demo: fresh machine -> .venv, install, run examples/quickstart.py on the bundled photos
# make test: the test suite (what CI runs); make test-fast: the same without the tests marked slow
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# a CPU wheel here; GPU machines keep the torch they have (pyproject allows torch>=2.4)
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast lint clean weights

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	$(PY) -c "import cv2, dlib, mediapipe, torch; assert hasattr(cv2, 'CascadeClassifier')"
	touch $@

install: $(VENV)/.installed

demo: install weights
	$(PY) examples/quickstart.py

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

lint: install
	$(VENV)/bin/ruff check faceetl tests examples benchmarks

clean:
	rm -rf $(VENV) examples/output .pytest_cache

# Offline machines: take the weights from ../shared/weights when it is there (else they download).
FACEETL_HOME ?= $(HOME)/.cache/faceetl
export FACEETL_HOME
weights:
	@if [ -d ../shared/weights ]; then mkdir -p "$(FACEETL_HOME)" && \
	  find ../shared/weights -type f -exec cp -n {} "$(FACEETL_HOME)/" \; && \
	  echo "weights from ../shared/weights in $(FACEETL_HOME)"; fi
