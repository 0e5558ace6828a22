# `make test` and `make demo` each set themselves up: they create .venv when it is missing and
# install hgpose with its extras. torch is installed first, pinned to the CPU build that lies on this
# machine's disk, unless the environment can already import a torch (a user's own GPU build stays).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
STAMP  := $(VENV)/.hgpose-installed

.PHONY: setup test lint demo bench gpu-check docs dist clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_CPU)"
	$(PY) -m pip install --quiet -e ".[dev,export,docs,tensorboard]"
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks tools
	$(VENV)/bin/lint-imports

test: $(STAMP) lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m hgpose.demo

# The documentation site (MkDocs + Material + mkdocstrings) into site/; --strict fails on a broken
# link or an API page that cannot be generated.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# An sdist and a wheel in dist/.
dist: $(STAMP)
	$(PY) -m build --outdir dist

bench: $(STAMP)
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/evaluate.py

# On a machine with a CUDA GPU: step and data benchmarks, a short train, evaluate, export and a
# torchrun launch, in a few minutes; figures in gpu-check-out/gpu_check.md.
gpu-check: $(STAMP)
	PYTHON=$(PY) benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info .pytest_cache .ruff_cache
