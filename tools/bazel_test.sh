#!/usr/bin/env bash
# Runs the fast Bazel tests of tff_brats (everything not tagged `slow` or
# `gpu`), offline, and prints a summary.
#
#   tools/bazel_test.sh                          # //...
#   tools/bazel_test.sh //:layouts_test //:records_test
#   tools/bazel_test.sh --build_everything //:layouts_test
#                                                # `bazel build //...` first
#                                                # (every target must build),
#                                                # then test the targets
#   tools/bazel_test.sh --nocache_test_results   # words starting with '-' are
#                                                # `bazel test` flags (use
#                                                # --flag=value); after `--`
#                                                # every word is a target
#
# Needs `bazel` (tools/install_bazel.sh) and the project venv with the test
# tools (tools/bootstrap.sh --dev). Settings live in .bazelrc. Bazel keeps its
# output under ~/.cache/bazel (set BAZEL_OUTPUT_USER_ROOT to put it elsewhere,
# e.g. a CI cache directory); the `bazel-*` links it makes in the repository
# are git-ignored, and per-test logs are under bazel-testlogs/<target>/.
#
# Exit status is Bazel's: 0 all passed, 1 build failed, 3 some test failed,
# 4 no test matched.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v bazel >/dev/null 2>&1; then
  echo "[bazel_test] bazel not found; run tools/install_bazel.sh" >&2
  exit 2
fi
if [[ ! -x .venv/bin/python3 ]] || ! .venv/bin/python3 -c 'import pytest' 2>/dev/null; then
  echo "[bazel_test] no venv with pytest in $PWD/.venv;" \
    "run tools/bootstrap.sh --dev" >&2
  exit 2
fi

flags=()
targets=()
only_targets=0
build_everything=0
for arg in "$@"; do
  if (( ! only_targets )) && [[ "$arg" == --build_everything ]]; then
    build_everything=1
  elif (( only_targets )); then
    targets+=("$arg")
  elif [[ "$arg" == -- ]]; then
    only_targets=1
  elif [[ "$arg" == -* ]]; then
    flags+=("$arg")
  else
    targets+=("$arg")
  fi
done
(( ${#targets[@]} )) || targets=(//...)

startup=()
if [[ -n "${BAZEL_OUTPUT_USER_ROOT:-}" ]]; then
  startup+=("--output_user_root=$BAZEL_OUTPUT_USER_ROOT")
fi

events=$(mktemp "${TMPDIR:-/tmp}/bazel_test_events.XXXXXX")
# The Bazel server this script starts (a JVM on loopback that would
# otherwise idle for three hours) ends with the script, on success, failure
# and Ctrl-C alike.
trap 'rm -f "$events"; bazel "${startup[@]}" shutdown >/dev/null 2>&1 || true' EXIT

if (( build_everything )); then
  start=$SECONDS
  if ! bazel "${startup[@]}" build -- //...; then
    echo "[bazel_test] bazel build //... failed" >&2
    exit 1
  fi
  echo "[bazel_test] bazel build //... passed in $(( SECONDS - start ))s"
fi

start=$SECONDS
bazel "${startup[@]}" test \
  --test_tag_filters=-slow,-gpu \
  --build_event_json_file="$events" \
  "${flags[@]}" -- "${targets[@]}"
status=$?
elapsed=$(( SECONDS - start ))

# Summary from Bazel's build event stream.
.venv/bin/python3 - "$events" "$status" "$elapsed" <<'EOF'
import json
import sys

events_path, status, elapsed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
results = {}  # label -> (status, cached, seconds) of the last attempt
summaries = {}  # label -> overall status
broken = {}  # label -> why it failed to build
with open(events_path) as f:
  for line in f:
    event = json.loads(line)
    kind, key = next(iter(event['id'].items()))
    if kind == 'testResult' and 'testResult' in event:
      result = event['testResult']
      seconds = int(result.get('testAttemptDurationMillis', 0)) / 1000
      results[key['label']] = (
        result.get('status', 'NO_STATUS'),
        bool(result.get('cachedLocally')),
        seconds,
      )
    elif kind == 'testSummary' and 'testSummary' in event:
      summaries[key['label']] = event['testSummary'].get('overallStatus')
    elif 'aborted' in event and event['aborted'].get('reason'):
      # The target that broke the build (a bare `aborted: {}` only means
      # the build stopped before reaching a target).
      if 'label' in key:
        aborted = event['aborted']
        why = aborted.get('description') or aborted['reason']
        broken.setdefault(key['label'], why)
    elif kind == 'targetCompleted' and 'completed' in event:
      if not event['completed'].get('success', False):
        broken.setdefault(key['label'], 'failed to build')

counts = {}
print()
print('=' * 72)
print('tff_brats fast tests (bazel test --test_tag_filters=-slow,-gpu)')
for label in sorted(set(results) | set(summaries)):
  overall = summaries.get(label) or results[label][0]
  _, cached, seconds = results.get(label, ('', False, 0.0))
  counts[overall] = counts.get(overall, 0) + 1
  if cached:
    counts['cached'] = counts.get('cached', 0) + 1
  note = ' (cached)' if cached else ''
  print(f'  {overall:<10} {seconds:7.1f}s  {label}{note}')
for label, why in sorted(broken.items()):
  if label not in summaries:
    print(f'  {"BROKEN":<10} {"":8}  {label}: {why}')
total = len(set(results) | set(summaries))
passed = counts.get('PASSED', 0)
parts = [f'{passed}/{total} passed', f'{counts.get("cached", 0)} cached']
failed = total - passed
if failed:
  parts.append(f'{failed} not passed')
if broken:
  parts.append(f'{len(broken)} target(s) failed to build')
print(f'{", ".join(parts)}; {elapsed}s; bazel exit status {status}')
for label in sorted(results):
  if (summaries.get(label) or results[label][0]) != 'PASSED':
    log = label.lstrip('/').replace(':', '/').lstrip('/')
    print(f'  log: bazel-testlogs/{log}/test.log')
print('=' * 72)
EOF

exit "$status"
