# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv.
#
# TORCH is what the install step asks pip for. The default is the CPU build this
# project is developed and tested with. GPU users: install your CUDA build of torch
# into .venv first and run `make demo TORCH=` (empty: keep the torch you have).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
DEMO   ?= runs/demo
# extra pytest arguments, e.g. PYTEST_ARGS="--order random" (tests/conftest.py)
PYTEST_ARGS ?=

.PHONY: demo test lint install bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH)),$(PY) -m pip install -q "$(TORCH)")
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# the engines `pipeplan export` writes for (torchtitan, megatron-core), which tests/test_export.py
# checks the exports with; only `make test` needs them
$(VENV)/.installed-export: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,export]"
	touch $@

demo: install
	OMP_NUM_THREADS=1 $(PY) -m profiles gpt2-demo --seq-len 128 --microbatch-sizes 1 --repeats 15 \
		-o $(DEMO)/profile.json
	$(PY) pipeplan.py calibrate -o $(DEMO)/cluster.json
	$(PY) pipeplan.py plan $(DEMO)/profile.json --cluster $(DEMO)/cluster.json --devices 2 --device-memory 4GiB \
		--pp 2 --schedules 1F1B \
		--global-batch 8 --microbatch-size 1 --explain -o $(DEMO)/plan.json
	$(PY) pipeplan.py simulate $(DEMO)/plan.json -o $(DEMO)/timeline.json --trace $(DEMO)/timeline.trace.json \
		--gantt $(DEMO)/timeline.png
	$(PY) pipeplan.py validate $(DEMO)/plan.json --steps 5 --warmup 2 --check
	@echo "artifacts in $(DEMO)/:" && ls $(DEMO)

test: install $(VENV)/.installed-export
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	PIPEPLAN_REQUIRE_EXPORT=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install
	for b in bench/*.py; do [ $$b = bench/fidelity.py ] || $(PY) $$b || exit 1; done
	$(PY) bench/fidelity.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
