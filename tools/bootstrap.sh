#!/usr/bin/env bash
# Creates or updates the project venv (.venv) with the pinned requirements.
#
#   tools/bootstrap.sh          runtime dependencies + tff_brats (editable)
#   tools/bootstrap.sh --dev    the same plus the test and lint tools
#
# Idempotent: a stamp holding the hash of the requirement files lets a second
# run return at once. TensorFlow Federated is installed with --no-deps because
# every TFF release from 0.64 to 0.87 pins jaxlib==0.4.14, which is not on the
# package index; requirements.txt pins everything TFF needs instead (with
# jaxlib 0.4.13, which TFF only uses for its optional JAX front end).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
venv=.venv

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if [[ ! -x "$venv/bin/python" ]] || \
   ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  if ! python=$(find_python); then
    found=$(command -v python3 >/dev/null && python3 --version 2>&1 || echo 'no python3')
    echo "tff_brats needs Python 3.11: TensorFlow Federated 0.87 supports only" >&2
    echo "Python < 3.12 and TensorFlow 2.14 has no wheels for 3.12+." >&2
    echo "Found: $found. Install python3.11 (or set PYTHON=/path/to/python3.11)" >&2
    echo "and run this command again." >&2
    exit 1
  fi
  echo "[bootstrap] creating $venv with $python"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi

stamp_files=(requirements.txt requirements-tff.txt setup.cfg pyproject.toml)
(( dev )) && stamp_files+=(requirements-dev.txt)
want=$(cat "${stamp_files[@]}" | sha256sum | cut -d' ' -f1)
stamp="$venv/.stamp-$([[ $dev == 1 ]] && echo dev || echo run)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check)
echo "[bootstrap] installing pinned requirements into $venv (first run: a few minutes)"
"${pip[@]}" install -q -r requirements.txt
"${pip[@]}" install -q --no-deps -r requirements-tff.txt
if (( dev )); then
  "${pip[@]}" install -q -r requirements-dev.txt
fi
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[bootstrap] $venv is ready"
