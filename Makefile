# tff_brats: every set-up step is behind these two commands.
#
#   make demo   installs what it needs, then runs the main job on the
#               built-in synthetic BraTS-style data
#   make test   installs what it needs, then runs formatter, linter, the
#               pytest suite (all but `gpu` tests, on two workers), builds
#               every Bazel target and runs four representative ones
#
# Both are idempotent: a second run reuses the venv and the demo's outputs.

SHELL := /bin/bash
PYTHON := .venv/bin/python
DEMO_DIR ?= demo_output

.PHONY: demo test venv venv-dev format lint pytest bazel-test

demo: venv
	@tools/demo.sh "$(DEMO_DIR)"

test: venv-dev
	@tools/run_tests.sh

venv:
	@tools/bootstrap.sh

venv-dev:
	@tools/bootstrap.sh --dev

format: venv-dev
	.venv/bin/ruff format .

lint: venv-dev
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .

pytest: venv-dev
	.venv/bin/pytest

bazel-test: venv-dev
	@tools/install_bazel.sh
	@tools/bazel_test.sh
