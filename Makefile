# Two entry points for a fresh machine (see README): `make demo` and `make test`.
VENV ?= .venv
FSIAD = $(VENV)/bin/fsiad
TEST_ENV = HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE

.PHONY: setup demo test test-all lint bench

setup:
	bash scripts/setup.sh

demo: setup
	$(FSIAD) score --shots 4 --demo textile --out runs/demo

test: setup
	$(TEST_ENV) $(VENV)/bin/python -m pytest -p no:dash -q -m "not slow" tests

test-all: setup
	$(TEST_ENV) $(VENV)/bin/python -m pytest -p no:dash -q tests

lint: setup
	$(VENV)/bin/ruff check fsiad fewshot pointcloud prompts cli tests bench

# Short runs of bench/bench_*.py -> runs/bench/NN_<name>.json + runs/bench/BENCHMARKS.md (not in git).
# BENCH_ARGS: e.g. "--all" (adds the slow ones), "--only methods,metrics", "--list".
bench: setup
	$(VENV)/bin/python -m bench.run_all $(BENCH_ARGS)
