#!/usr/bin/env bash
# Installs the Bazel that tff_brats builds and tests with: Debian's
# `bazel-bootstrap` (Bazel 4.2.3) plus the rule packages that WORKSPACE
# points at instead of downloading them (`bazel-platforms`,
# `bazel-rules-java`, `bazel-rules-proto`).
#
#   tools/install_bazel.sh
#
# Idempotent: when `bazel` and the three rule folders are present it does
# nothing. Otherwise it installs the missing packages with apt-get, as root
# or through sudo. Checked on Debian 12 (bookworm: bazel-bootstrap
# 4.2.3+ds-9, bazel-platforms 0.0.2); other releases may ship other versions.
set -euo pipefail

# Package -> what WORKSPACE (or the shell) needs from it.
declare -A needs=(
  [bazel-bootstrap]=bazel
  [bazel-platforms]=/usr/share/bazel/tools/platforms/WORKSPACE
  [bazel-rules-java]=/usr/share/bazel/rules/java/WORKSPACE
  [bazel-rules-proto]=/usr/share/bazel/rules/proto/WORKSPACE
)

present() {  # package
  local want=${needs[$1]}
  if [[ "$want" == /* ]]; then
    [[ -f "$want" ]]
  else
    command -v "$want" >/dev/null 2>&1
  fi
}

missing=()
for package in bazel-bootstrap bazel-platforms bazel-rules-java bazel-rules-proto; do
  present "$package" || missing+=("$package")
done

if (( ${#missing[@]} == 0 )); then
  echo "[install_bazel] bazel and its rule packages are installed; nothing to do."
  exit 0
fi

echo "[install_bazel] missing: ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[install_bazel] error: apt-get not found. tff_brats uses Debian's" >&2
  echo "Bazel 4.2.3 packages (${missing[*]}). Elsewhere, install Bazel 4.2.3" >&2
  echo "and put the platforms, rules_java and rules_proto sources where" >&2
  echo "WORKSPACE expects them (/usr/share/bazel/...)." >&2
  exit 1
fi

if (( EUID == 0 )); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "[install_bazel] error: installing ${missing[*]} needs root, and this" >&2
  echo "user is not root and sudo is not installed. Ask an administrator to" >&2
  echo "run: apt-get install ${missing[*]}" >&2
  exit 1
fi

apt_get=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
echo "[install_bazel] ${as_root[*]:+${as_root[*]} }apt-get install ${missing[*]}"
# Install from the current package lists first; refresh them only if that
# fails (stale or empty lists, e.g. in a fresh container).
if ! "${apt_get[@]}" install -y --no-install-recommends "${missing[@]}"; then
  "${apt_get[@]}" update
  "${apt_get[@]}" install -y --no-install-recommends "${missing[@]}"
fi

for package in "${missing[@]}"; do
  if ! present "$package"; then
    echo "[install_bazel] error: installed $package but ${needs[$package]}" \
      "is still missing." >&2
    exit 1
  fi
done
echo "[install_bazel] done."
