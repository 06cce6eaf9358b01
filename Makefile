# `make train` and `make test` each set up .venv on their own (see README.md); `make check`, `make docs` and
# `make wheel` are the habits CI keeps (`.ci/run`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# The PyTorch builds the project is tested with; aarch64 needs an older pair.
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_SPEC := torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: train test bench check docs docs-serve wheel clean

# The dev extra holds everything: the tests' peers, the serve and docs extras, ruff, mypy, build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/vitkit train

# The page test drives Debian's Chromium; install it when missing (as root, where apt works). Without it that one
# test is skipped with the reason, so a machine without apt still runs everything else; under CI (CI=true) every
# skip fails instead (tests/conftest.py).
CHROMIUM := /usr/bin/chromium

test: $(STAMP)
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: could not install chromium; the web page test will be skipped (and fail under CI)"
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/digits_accuracy.py --seeds 0 1 2

# Lint, formatting and types (settings in pyproject.toml; the same hooks in .pre-commit-config.yaml).
check: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	$(VENV)/bin/mypy src

# The documentation site into site/; the benchmark pages are generated from benchmarks/results/*.json.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# A wheel in dist/, then installed into a clean venv where `vitkit --help` and `import vitkit` must work.
wheel: $(STAMP)
	rm -rf dist build
	$(PY) -m build --wheel --no-isolation --outdir dist
	$(PY) tools/check_wheel.py dist

clean:
	rm -rf $(VENV) runs build dist site *.egg-info src/*.egg-info
