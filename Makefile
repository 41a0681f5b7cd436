# cbo_ros — the two quick-start commands and a few helpers. Every target sets itself up first.
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
ENV := source $(ROOT)/cbo_env.sh

.PHONY: setup demo test test-unit test-integration lint eval calibrate benchmark results premodel early_exit colcon clean distclean

setup:
	@bash $(ROOT)/scripts/setup.sh

demo: setup
	@$(ENV) && cbo_demo $(DEMO_ARGS)

test: setup
	@$(ENV) && python -m pytest -q $(PYTEST_ARGS)

test-unit: setup
	@$(ENV) && python -m pytest -q -m "not integration" $(PYTEST_ARGS)

test-integration: setup
	@$(ENV) && python -m pytest -q -m integration $(PYTEST_ARGS)

lint: setup
	@$(ENV) && python -m pytest -q test/test_lint.py

calibrate: setup
	@$(ENV) && cbo_calibrate $(ARGS)

eval: setup
	@$(ENV) && cbo_eval $(ARGS)

benchmark: setup
	@$(ENV) && python $(ROOT)/scripts/benchmark_planner.py && python $(ROOT)/scripts/benchmark_pipeline.py

results: setup
	@$(ENV) && python $(ROOT)/scripts/benchmark_results.py $(ARGS)

# Premodel model selection (docs/premodel.md): train on the calibration split (cached; about
# 20-25 min on 2 cores the first time), then score it on the evaluation split (ARGS=--grid: the
# whole bandwidth x deadline grid of make results).
premodel: setup
	@$(ENV) && python -m cbo_ros.tools.premodel build && \
		python $(ROOT)/scripts/premodel_results.py $(ARGS)

# Early-exit partition offloading (docs/early_exit.md): branches, bytes, p_tar study, grid.
early_exit: setup
	@$(ENV) && python $(ROOT)/scripts/early_exit_results.py $(ARGS)

colcon: setup
	@bash $(ROOT)/scripts/colcon_build.sh

clean:
	rm -rf $(ROOT)/build $(ROOT)/install $(ROOT)/log

distclean: clean
	rm -rf $(ROOT)/.venv $(ROOT)/artifacts $(ROOT)/cbo_env.sh
