#!/usr/bin/env bash
# The whole test suite (run by `make test` and by CI through .ci/run):
# formatter and linter, pytest (everything not marked `gpu`, each test once,
# on $PYTEST_WORKERS worker processes, default 2 (pytest-xdist, one file per
# worker at a time), with the 20 slowest printed), then Bazel: every target must build
# (`bazel build //...`) and a few representative test targets, one per
# layer, run through Bazel's own runner (pytest has run them all already).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

echo "== ruff format --check"
.venv/bin/ruff format --check .
echo "== ruff check"
.venv/bin/ruff check .
echo "== pytest"
.venv/bin/pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=20
echo "== bazel build //... and representative bazel test targets"
tools/install_bazel.sh
tools/bazel_test.sh --build_everything \
  //:layouts_test //:accounting_test //:mechanisms_selective_sharing_test \
  //:federated_config_test
