# Two commands for a fresh machine: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on disk on these machines; installing it first keeps pip from
# resolving plain `torch` to a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all lint bench screenshot clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mldbg demo mldbg-demo

test: $(STAMP)
	$(BIN)/ruff check ml_debugger tests benchmarks
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check ml_debugger tests benchmarks
	$(BIN)/ruff format --check ml_debugger tests benchmarks
	$(BIN)/mypy ml_debugger

bench: $(STAMP)
	$(BIN)/python benchmarks/extract_overhead.py

# The README's picture of the demo report (needs Debian's chromium).
screenshot: $(STAMP)
	test -f mldbg-demo/mldbg.duckdb || $(BIN)/mldbg demo mldbg-demo
	cd mldbg-demo && ../$(BIN)/mldbg report --out report.html
	$(BIN)/python -m tests.browser mldbg-demo/report.html docs/report.png 2300

clean:
	rm -rf $(VENV) mldbg-demo .pytest_cache .ruff_cache .mypy_cache
