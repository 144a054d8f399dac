# Thin wrappers: everything real happens in `trt-pipeline` (see `trt-pipeline --help`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RECIPE ?= recipes/resnet50.yaml
STAMP  := $(VENV)/.installed
MODELS := models/resnet50.onnx models/cleanup_needed.onnx models/two_input.onnx models/audio_if.onnx models/resnet50_calibration.npz

.PHONY: engine test lint check models clean-venv

## engine: build the engines of RECIPE (default recipes/resnet50.yaml) into artifacts/
engine: $(STAMP) $(MODELS)
	$(BIN)/trt-pipeline build $(RECIPE)

## test: run the test suite (real TensorRT-RTX builds on CPU)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## lint: ruff (configured in pyproject.toml) over the package, tests and scripts
lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench models

## check: validate every shipped recipe without building
check: $(STAMP) $(MODELS)
	$(BIN)/trt-pipeline check recipes/*.yaml

## models: generate the example models (and int8 calibration data) that are missing (seeded random weights)
models: $(MODELS)

# Generated only when missing: a model you put there yourself is never overwritten.
models/%.onnx: | $(STAMP)
	$(BIN)/python models/make_models.py $* $@

models/%.npz: | $(STAMP)
	$(BIN)/python models/make_models.py $* $@

# The virtualenv, created and filled on first use and again whenever pyproject.toml or constraints.txt change.
$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV): installing trt-pipeline, TensorRT-RTX, ONNX Runtime, Polygraphy and the test tools (first use: ~1 minute)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,cluster]'
	touch $@

clean-venv:
	rm -rf $(VENV)

## nightly: rebuild every recipe in RECIPES (default recipes/) for every target, compare with the previous
##          night, write the report under artifacts/_nightly/ (JOBS=N builds N pairs at once)
RECIPES ?= recipes
JOBS    ?= 1
.PHONY: nightly
nightly: $(STAMP) $(MODELS)
	$(BIN)/trt-pipeline nightly $(RECIPES) --jobs $(JOBS)

## bench: time `trt-pipeline build` against `polygraphy convert`, alternating A/B (minutes; needs ~10 GB of RAM
##        and ~5 GB of disk for the >2 GiB model); writes bench/results.json and bench/results.png, then prints
##        bench/floor.py: the cold-build floor (only the steps every build must do) against polygraphy convert
BENCH_ARGS ?=
.PHONY: bench
bench: $(STAMP) $(MODELS)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/floor.py

## bench-cluster: the build farm on a local Ray cluster against the local executor, the >2 GiB model through it, and
##                a simulation of 100 recipes x 4 GPU types on 1, 4, 16 nodes (~10 minutes); writes bench/cluster.json
.PHONY: bench-cluster
bench-cluster: $(STAMP) $(MODELS)
	$(BIN)/python bench/cluster.py $(BENCH_ARGS)
