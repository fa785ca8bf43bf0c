# The two commands of the README: `make demo` (train on the embedded demo data) and `make test`.
# Both create .venv when missing and install what they need; nothing else is required.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,export,lightning,mlflow,tune]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/imgcls train configs/demo.yaml

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PY) -m pip install -q -e '.[dev,export,lightning,mlflow,tune,bench]'
	touch $@

# Every benchmark, each writing its section of BENCHMARKS.md; TIMM_TRAIN=path/to/timm/train.py adds timm's rows.
bench: $(VENV)/.installed-bench
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
