# lopt developer commands. `make demo` and `make test` work on a fresh clone, offline.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q

.PHONY: demo test test-slow bench install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(PIP) install -e .

install-test: $(BIN)/python
	$(PIP) install -e ".[test]"

SHARED ?= ../shared/pretrained
CKPT := runs/checkpoints

## demo: benchmark the offline learned optimizers against tuned Adam on the `demo` suite.
## Official weights found in $(SHARED) (Celo, Celo-Adam, NiNo) are linked in; the others are
## reported as not included, with the reason.
demo: install
	@mkdir -p $(CKPT)/celo $(CKPT)/celo-adam $(CKPT)/nino
	@if [ -f $(SHARED)/celo/celo_theta.state ]; then ln -sf $(abspath $(SHARED))/celo/celo_theta.state $(CKPT)/celo/theta.state; fi
	@if [ -f $(SHARED)/celo/celo_adam_theta.state ]; then ln -sf $(abspath $(SHARED))/celo/celo_adam_theta.state $(CKPT)/celo-adam/theta.state; fi
	@for f in $(SHARED)/nino/*.pt; do [ -f "$$f" ] && ln -sf $(abspath $(SHARED))/nino/$$(basename $$f) $(CKPT)/nino/; done; true
	LOPT_CHECKPOINT_DIR=$(CKPT) $(BIN)/lopt benchmark --suite demo --optimizers demo --seeds 3 --out runs/demo

## test: the default (fast) suite, offline, on CPU
test: install-test
	$(BIN)/python -m pytest -n auto -q

## test-slow: the long tests (meta-training convergence, full-size parity, multi-process)
test-slow: install-test
	$(BIN)/python -m pytest -n auto -q -m slow

## bench: speed benchmarks (ratios against a baseline measured in the same run)
bench: install
	$(BIN)/python benchmarks/lopt_step.py
	$(BIN)/python benchmarks/meta_throughput.py
	$(BIN)/python benchmarks/nowcast_step.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
