# make demo: fresh machine -> .venv, the base install (what examples/quickstart.py needs), run it
# make install: the same with every extra and the test tools (.[dev]); make test: the test suite
# (what CI runs); make test-fast: the same without the tests marked slow
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# a CPU wheel here; GPU machines keep the torch they have (pyproject allows torch>=2.4)
TORCH ?= torch==2.13.0
# what older venvs hold besides opencv-python-headless: other cv2 builds (their cv2 files overlap,
# so uninstalling one breaks the other) and mediapipe, which brought opencv-contrib-python
STALE := mediapipe opencv-python opencv-contrib-python opencv-contrib-python-headless
# exactly one OpenCV distribution, and one that has CascadeClassifier (OpenCV 4)
CHECK_CV2 := import cv2, importlib.metadata as m; \
	d = {x.metadata['Name'].lower() for x in m.distributions() if x.metadata['Name'].lower().startswith('opencv')}; \
	assert len(d) == 1, f'{len(d)} OpenCV distributions: {sorted(d)}'; \
	assert hasattr(cv2, 'CascadeClassifier'), 'this OpenCV has no CascadeClassifier'

.PHONY: install demo test test-fast lint clean weights

# the venv, torch, and no stale OpenCV (the stale ones and opencv-python-headless come out, and
# the pip install after this puts opencv-python-headless back whole)
define prepare
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	@stale=$$($(PY) -c "import importlib.metadata as m; \
	  names = {d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()}; \
	  print(' '.join(sorted(names & set('$(STALE)'.split()))))"); \
	if [ -n "$$stale" ]; then \
	  echo "uninstalling $$stale and opencv-python-headless (reinstalled next)"; \
	  $(PIP) uninstall -q -y $$stale opencv-python-headless; \
	fi
endef

$(VENV)/.base: pyproject.toml
	$(prepare)
	$(PIP) install -q -e .
	$(PY) -c "$(CHECK_CV2); import faceetl, torch"
	touch $@

$(VENV)/.installed: pyproject.toml
	$(prepare)
	$(PIP) install -q -e ".[dev]"
	$(PY) -c "$(CHECK_CV2); import faceetl, torch, dlib, ai_edge_litert"
	touch $@ $(VENV)/.base

install: $(VENV)/.installed

demo: $(VENV)/.base weights
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
