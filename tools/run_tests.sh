#!/usr/bin/env bash
# The whole test suite (run by `make test` and by CI through .ci/run):
# formatter and linter, pytest (everything not marked `gpu`), and the fast
# Bazel targets (everything not tagged `slow` or `gpu`).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

echo "== ruff format --check"
.venv/bin/ruff format --check .
echo "== ruff check"
.venv/bin/ruff check .
echo "== pytest"
.venv/bin/pytest
echo "== bazel test (fast targets)"
tools/install_bazel.sh
tools/bazel_test.sh
