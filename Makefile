# Two set-up commands for a fresh machine:  make install && make demo   |   make test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_DATA  ?= demo-data
DEMO_STORE ?= demo-store.zarr

.PHONY: install demo test bench clean

install: $(BIN)/softprep

$(BIN)/softprep: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: install
	$(BIN)/softprep demo --out $(DEMO_DATA)
	$(BIN)/softprep build --dataset cityscapes --root $(DEMO_DATA) --out $(DEMO_STORE) --scales 0.125 0.25 0.5 --overwrite
	$(BIN)/softprep info $(DEMO_STORE)
	$(BIN)/softprep priors $(DEMO_STORE)
	$(BIN)/softprep verify $(DEMO_STORE)

test: install
	$(BIN)/python -m pytest -q

# Every figure the docs quote is rewritten in its generated block (a quiet machine gives the real ones).
bench: install demo
	$(BIN)/python benchmarks/bench_build.py --json bench-results.json --readme docs/performance.md
	$(BIN)/python benchmarks/bench_datasets.py --readme docs/store.md
	$(BIN)/python benchmarks/bench_cluster.py --images 24 --readme docs/clusters.md
	$(BIN)/python benchmarks/bench_loader.py $(DEMO_STORE) --readme docs/training.md
	$(BIN)/python benchmarks/bench_fit.py --json bench-fit.json --readme docs/performance.md
	$(BIN)/python benchmarks/bench_audit.py --json bench-audit.json --readme docs/audit.md
	$(BIN)/python benchmarks/bench_volumes.py --json bench-volumes.json --readme docs/performance.md

clean:
	rm -rf $(DEMO_DATA) $(DEMO_STORE) .$(DEMO_STORE).lock .pytest_cache bench-results.json bench-fit.json bench-audit.json bench-volumes.json
