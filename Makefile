# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTEST_ARGS ?=

help:
	@echo "make demo   - set up everything and run version_demo on embedded defaults"
	@echo "make test   - set up everything and run the whole test suite"
	@echo "make setup  - only the idempotent bootstrap (apt, MariaDB, PostgreSQL, .venv, Airflow DB)"
	@echo "make e2e    - only the whole loop under a real scheduler (part of make test too)"
	@echo "make celery - only the CeleryExecutor test: Redis, two workers, 8 projects (part of make test too)"
	@echo "make bench  - performance benchmark (BENCH_ARGS='--rows 2000000 --repeat 3'), then the fan-in benchmark"
	@echo "make fan-in - only the fan-in benchmark: N publishers at once, this protocol vs the previous (FANIN_ARGS='--publishers 100')"
	@echo "make ui     - Airflow UI + registry page on the demo data (all four components, loopback); prints URL and login; Ctrl-C stops"

setup:
	@bash scripts/bootstrap.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@source scripts/env.sh && python -m pytest $(PYTEST_ARGS)

e2e: setup
	@source scripts/env.sh && python -m pytest tests/test_scheduler_e2e.py -v $(PYTEST_ARGS)

celery: setup
	@source scripts/env.sh && python -m pytest tests/test_celery_e2e.py -v $(PYTEST_ARGS)

BENCH_ARGS ?=
FANIN_ARGS ?=
bench: setup
	@source scripts/env.sh && python tests/benchmarks/bench.py $(BENCH_ARGS) && python tests/benchmarks/fan_in.py $(FANIN_ARGS)

fan-in: setup
	@source scripts/env.sh && python tests/benchmarks/fan_in.py $(FANIN_ARGS)

ui: setup
	@bash scripts/ui.sh

.PHONY: help setup demo test e2e celery bench fan-in ui
