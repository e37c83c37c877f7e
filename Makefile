# tda developer commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Pinned: this machine (and CI) has a CPU build of exactly this version on disk; an
# unpinned torch pulls several GB of CUDA packages.
TORCH  := torch==2.13.0
STEERLING := steerling==0.2.0
DEMO_DIR ?= build/demo

.DEFAULT_GOAL := help
.PHONY: help install test test-fast demo bench eval lint format clean sdist worker-image

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv and install tda with its test extras

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet $(TORCH) -e '.[test,gcs,steerling,cpu,serve,dask]'
	# steerling declares Python >= 3.13 and pins torch 2.8 / transformers 4, yet runs on
	# Python 3.11 with what is installed above: take the package alone.
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python $(STEERLING)
	touch $@

test: install ## Run the whole test suite (CPU; GPU/network tests skip themselves; slowest 15 listed)
	$(BIN)/python -m pytest -q --durations=15

test-fast: install ## Run the tests not marked slow (slowest 15 listed)
	$(BIN)/python -m pytest -q -m 'not slow' --durations=15

demo: install ## Run the main job end to end on the embedded default and show the result
	$(BIN)/python -m tda.jobs.demo --out $(DEMO_DIR)

bench: install ## Benchmarks (figures go in docs/benchmarks.md)
	$(BIN)/python benchmarks/bench_chunk.py
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_index_pq.py
	$(BIN)/python benchmarks/bench_channels.py
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_heap.py
	$(BIN)/python benchmarks/steerling_size.py
	$(BIN)/python benchmarks/bench_attribute.py
	$(BIN)/python benchmarks/bench_serve.py

eval: install ## Attribution quality: tda representations, hybrids, BM25 / exact span / Grad-Cos / TRAK, counterfactual retraining (docs/quality.md)
	$(BIN)/python -m tda.jobs.quality --out build/eval

sdist: install ## Build dist/tda-<version>.tar.gz (what --setup_file and the worker image install)
	rm -rf dist && $(BIN)/python setup.py -q sdist -d dist

worker-image: sdist ## GPU worker image for remote runners: make worker-image IMAGE=registry/tda/worker:0.1.0
	@test -n "$(IMAGE)" || { echo "usage: make worker-image IMAGE=registry/path/worker:tag"; exit 2; }
	docker build -f docker/worker.Dockerfile --build-arg TDA_SDIST=$$(ls dist/tda-*.tar.gz) -t $(IMAGE) .

lint: install ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Apply ruff formatting and autofixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## Remove build outputs (keeps .venv)
	rm -rf build .pytest_cache .ruff_cache .hypothesis
