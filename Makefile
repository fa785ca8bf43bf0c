# The two commands of the README: `make demo` (train on the embedded demo data) and `make test`.
# Both create .venv when missing and install what they need; nothing else is required.
# `make test` checks the package's shape (tools/shape_check.py: layers, cycles, private names, function sizes),
# then runs every test on 2 workers and prints the 15 slowest; `make test-fast` leaves out the tests marked slow.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast shape bench bench-serve bench-serve-setup clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,export,lightning,mlflow,tune,audit,serve]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/imgcls train configs/demo.yaml

# --dist loadscope: a test file runs on one worker, so its module fixtures (trained runs, a cv, an MLflow server)
# are built once, not once per worker.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadscope --durations=15

# The shape check runs first; pytest runs even when it fails, so CI shows both, and the target fails if either did.
test: $(VENV)/.installed-dev
	$(PY) tools/shape_check.py; shape=$$?; $(PYTEST); tests=$$?; \
	  if [ $$shape -ne 0 ]; then echo "make test: tools/shape_check.py found problems (listed above the tests)"; fi; \
	  exit $$(( shape || tests ))

test-fast: $(VENV)/.installed-dev
	$(PYTEST) -m "not slow"

shape:
	$(PYTHON) tools/shape_check.py

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PY) -m pip install -q -e '.[dev,export,lightning,mlflow,tune,audit,serve,bench]'
	touch $@

# Every benchmark, each writing its section of BENCHMARKS.md; TIMM_TRAIN=path/to/timm/train.py adds timm's rows.
bench: $(VENV)/.installed-bench
	$(PY) bench/run_all.py

# bench/bench_serve.py drives `imgcls serve` with ApacheBench (ab, from apache2-utils: a system package)
bench-serve-setup:
	command -v ab >/dev/null || (apt-get install -y apache2-utils || (apt-get update && apt-get install -y apache2-utils))

bench-serve: $(VENV)/.installed-bench bench-serve-setup
	$(PY) bench/bench_serve.py

clean-venv:
	rm -rf $(VENV)
