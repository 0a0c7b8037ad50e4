# airflow-provider-bgremoval — build, lint, test.
#
# Works from a fresh clone with only python3 and GNU make:
#   make test          lint + format check + mypy + the whole pytest suite (newest Airflow, .venv)
#   make test-compat   provider discovery + hook tests on the oldest supported Airflow (.venv-compat)
#   make test-retry-floor  the retry tests on the oldest tenacity pyproject.toml allows
#   make test-distributed  the example DAG on the CeleryExecutor: Redis, two workers, one killed
#   make demo          the whole job offline on a real scheduler (demo-quick: with dag.test())
#   make bench         pipeline benchmark figures (docs/benchmarks.md)
#   make docs          the documentation site (Sphinx + MyST + autodoc) into build/docs
#   make lint | typecheck | clean
#
# Variables (override on the command line, e.g. `make test PYTEST_ARGS="-x -k pixian"`):
#   PYTHON         interpreter that creates the virtualenvs
#   VENV           main virtualenv (Airflow as resolved from pyproject.toml: the newest 3.x)
#   COMPAT_VENV    compatibility virtualenv
#   COMPAT_AIRFLOW the oldest supported Airflow release, pinned in COMPAT_VENV
#   PYTEST_ARGS    extra pytest arguments

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
COMPAT_VENV ?= .venv-compat
COMPAT_AIRFLOW ?= 3.1.8
# Airflow 3.1.8's get_fernet() sets an attribute on cryptography's MultiFernet, which cryptography 51
# made a Rust type without settable attributes (AttributeError 'is_encrypted', so every connection with
# a password fails to load once a Fernet key is set); newer Airflow releases work with it.
COMPAT_PINS ?= 'cryptography<51'
PYTEST_ARGS ?=

BIN := $(VENV)/bin
COMPAT_BIN := $(COMPAT_VENV)/bin
PACKAGE := airflow_provider_bgremoval

# The compatibility pass (DESIGN.md decision 1): provider discovery, connection handling and the
# hooks/wire formats of every vendor, on the oldest supported Airflow. Operators, the pipeline, the
# sandbox and the DAG-level integration tests run on the newest Airflow only (`make test`).
COMPAT_TESTS ?= tests/unit/test_provider_info.py tests/unit/test_connections.py tests/unit/hooks \
	tests/unit/vendors tests/compat

.PHONY: test test-compat lint format typecheck pytest docs venv compat-venv clean

# -- virtualenvs -----------------------------------------------------------------------------------
# The stamp file is rebuilt when pyproject.toml changes (new dependency, new extra). `make test` and
# `make docs` share this virtualenv.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test,docs,openlineage]'
	touch $@

$(COMPAT_VENV)/.installed: pyproject.toml
	test -x $(COMPAT_BIN)/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_BIN)/python -m pip install -e '.[test]' 'apache-airflow==$(COMPAT_AIRFLOW)' $(COMPAT_PINS)
	touch $@

venv: $(VENV)/.installed
compat-venv: $(COMPAT_VENV)/.installed

# -- checks ----------------------------------------------------------------------------------------
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# mypy checks what [tool.mypy] `files` names: the package and example_dags/ (bare `mypy` does the same).
typecheck: $(VENV)/.installed
	$(BIN)/mypy

# The example-DAG import test runs on its own with Airflow's deprecated-import warning
# (DeprecatedImportWarning, a FutureWarning) turned into an error; the rest of the suite keeps the
# default warning filters (third-party libraries raise FutureWarnings we do not control).
STRICT_WARNING_TESTS := $(shell find tests -name 'test_example_dag*.py' 2>/dev/null)

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests $(foreach t,$(STRICT_WARNING_TESTS),--ignore=$(t)) $(PYTEST_ARGS)
ifneq ($(strip $(STRICT_WARNING_TESTS)),)
	$(BIN)/python -m pytest -q -W error::FutureWarning $(STRICT_WARNING_TESTS) $(PYTEST_ARGS)
endif

test: lint typecheck pytest

# -- docs ------------------------------------------------------------------------------------------
# The site (docs/conf.py): the Markdown pages through MyST, the API reference through autodoc, into
# build/docs. Warnings are errors and every cross-reference into the package must resolve (-n);
# -E re-reads every page, so a warning in an unchanged page still fails the build.
DOCS_OUT ?= build/docs
docs: $(VENV)/.installed
	$(BIN)/python -m sphinx -b html -n -W --keep-going -E -q docs $(DOCS_OUT)
	@echo "docs: $(DOCS_OUT)/index.html"

test-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_BIN)/python -c 'import airflow; print("compat: apache-airflow", airflow.__version__)'
	$(COMPAT_BIN)/python -m pytest -q $(wildcard $(COMPAT_TESTS)) $(PYTEST_ARGS)

# -- the tenacity floor ----------------------------------------------------------------------------
# retry.py must work on the oldest tenacity pyproject.toml allows. Airflow >= 3.1 itself requires
# tenacity >= 8.3, so neither virtualenv can hold that release: the retry tests run with .venv's
# interpreter and a directory holding only tenacity $(TENACITY_FLOOR) first on PYTHONPATH.
TENACITY_FLOOR ?= 8.2.0
TENACITY_FLOOR_DIR := $(VENV)/tenacity-floor
.PHONY: test-retry-floor

$(TENACITY_FLOOR_DIR)/.installed-$(TENACITY_FLOOR): | $(VENV)/.installed
	rm -rf $(TENACITY_FLOOR_DIR)
	$(BIN)/python -m pip install --quiet --no-deps --target $(TENACITY_FLOOR_DIR) 'tenacity==$(TENACITY_FLOOR)'
	touch $@

test-retry-floor: $(VENV)/.installed $(TENACITY_FLOOR_DIR)/.installed-$(TENACITY_FLOOR)
	PYTHONPATH=$(abspath $(TENACITY_FLOOR_DIR)) $(BIN)/python -c 'import importlib.metadata as m, tenacity; \
		v = m.version("tenacity"); print("retry floor: tenacity", v, "from", tenacity.__file__); \
		assert v == "$(TENACITY_FLOOR)", v'
	PYTHONPATH=$(abspath $(TENACITY_FLOOR_DIR)) $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/unit/test_retry.py $(PYTEST_ARGS)

# -- the distributed executor ----------------------------------------------------------------------
# test-distributed: example_bucket_remove_background under the CeleryExecutor with two Celery workers
# and Debian's redis-server as the broker (installed with apt-get when missing), one worker killed
# mid-shard; prints a figure line (docs/executors.md). Not part of `make test`: it needs the broker.
.PHONY: test-distributed
test-distributed: $(VENV)/.installed
	bash scripts/ensure-redis.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/distributed $(PYTEST_ARGS)

# -- demo / benchmarks -----------------------------------------------------------------------------
# demo:        the whole job offline under a real scheduler (airflow standalone): fake-gcs-server,
#              the vendor sandbox, example_bucket_remove_background, the low-credit halt, a 0-credit
#              rerun; outputs and the contact sheet in demo-output/ (see docs/examples.md).
# demo-quick:  the same flow with dag.test() in one process (no scheduler).
.PHONY: demo demo-quick
demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py

demo-quick: $(VENV)/.installed
	$(BIN)/python scripts/demo.py --quick

# bench: throughput, peak RSS and CPU per image of the bucket pipeline against the sandbox (200 ms
# latency) and fake-gcs-server, each in its own process; then the scale section: the example DAG's
# GCS requests per image (counted exactly), time to first paid call, per-shard planning RSS, against
# this checkout and BENCH_BASELINE, the code before one-plan-per-run (a git worktree); then 8 shard
# processes against a 10 requests/s sandbox account (request pacing, docs/rate-limits.md); then the
# renditions' rendering cost and Pixian's delta_png masters (bytes, CPU). Prints tables
# (docs/benchmarks.md). Figures, not a test: nothing fails on a slow machine.
# `make bench BENCH_ARGS=--quick` is a smoke run.
BENCH_ARGS ?=
BENCH_BASELINE ?= 0a8ad57
.PHONY: bench
bench: $(VENV)/.installed
	$(BIN)/python -m tests.benchmarks.bench_pipeline $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_scale $(BENCH_ARGS) --baseline-rev $(BENCH_BASELINE)
	$(BIN)/python -m tests.benchmarks.bench_rate_limit $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_renditions $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_delta $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_vendor_call $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_local_checks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build dist .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
