# edgeuad: set-up, demo, tests.  See README.md.
PY     ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
HNSW_H ?= /usr/include/hnswlib/hnswlib.h

.PHONY: setup sysdeps demo test test-fast bench clean

## setup: system headers (hnswlib) + .venv with torch==2.13.0 (CPU) + edgeuad[train,serve,dev] (builds edgeuad._rt)
setup: sysdeps
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[train,serve,dev]'
	$(BIN)/edgeuad info

# apt-get directly in a root shell (containers often have no sudo), through sudo otherwise
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
sysdeps:
	@pkgs=""; \
	if [ -f $(HNSW_H) ]; then echo "hnswlib headers: $(HNSW_H)"; else pkgs="libhnswlib-dev"; fi; \
	if ! $(PY) -c "import ensurepip, venv" 2>/dev/null; then pkgs="$$pkgs python3-venv"; fi; \
	if [ -n "$$pkgs" ]; then $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$pkgs; fi

## demo: synthetic data -> train ReContrast -> export ONNX bundle -> detect -> metrics + overlays
demo:
	$(BIN)/edgeuad demo --out demo_out

## test: the whole suite (CI runs exactly this through .ci/run)
test:
	$(BIN)/python -m pytest tests/python -q

## bench: regenerate the kernel, bank and pipeline figures of benchmarks/RESULTS.md (see benchmarks/*.py)
bench:
	$(BIN)/python benchmarks/bench_maps.py
	$(BIN)/python benchmarks/bench_bank.py
	$(BIN)/python benchmarks/bench_pipeline.py --make-bundle recontrast

clean:
	rm -rf build demo_out python/edgeuad/_rt*.so
