# podium: every target sets itself up. `make run` and `make test` are the whole set-up on a
# fresh machine: they create .venv in the checkout and install what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# XLA's CPU conv fusion is 2-5x faster with this flag (see launch/xla_flags.py); tests use 8
# simulated host devices so sharding code is exercised on one CPU.
TEST_ENV := JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
PYTEST_WORKERS ?= 2
BENCH_MODELS ?= all

.PHONY: run test test-all lint bench clean setup aot

setup: $(STAMP)

$(STAMP): pyproject.toml
	# espeak-ng speaks the offline speech corpus of the wav2vec2 CPU recipes and tests.
	command -v espeak-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; } \
	  || echo 'espeak-ng not installed (needs root and apt): wav2vec2 corpus tests will fail'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# libtpu lets the tests compile for TPU topologies on this CPU; it has no wheel everywhere.
	$(PY) -m pip install --quiet -e '.[test,tpu]' || echo 'libtpu not installed: TPU compile tests will be skipped'
	touch $(STAMP)

# The embedded default: ResNet on the real handwritten digits, written as ImageNet TFRecords.
run: $(STAMP)
	$(VENV)/bin/podium run resnet50 --recipe digits_cpu

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Compile every pod recipe for its TPU slice on this CPU (XLA:TPU ahead of time): does it fit in
# HBM, how many FLOPs, which collectives. libtpu (the `tpu` extra, ~700 MB) is installed when missing.
aot: $(STAMP)
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('libtpu') is None)" \
	  || $(PY) -m pip install --quiet -e '.[tpu]'
	JAX_PLATFORMS=cpu $(VENV)/bin/podium compile --all

# Train-step throughput of ResNet-50, RegNetY-1.6GF, BERT-base and wav2vec2 BASE beside
# transformers' PyTorch models (eager and torch.compile) on this device, and the input
# pipelines per core: bench/bench.md, bench.json, bench.png (BENCH_MODELS=resnet50,bert ...).
bench: $(STAMP)
	$(VENV)/bin/podium bench --models $(BENCH_MODELS) --out bench

lint: $(STAMP)
	$(PY) -m compileall -q benchmarks models input_pipelines launch results tests

clean:
	rm -rf runs .pytest_cache
