"""Main of every Bazel `py_test`: runs pytest on the test files it is given.

Tests in this repository are pytest-style, while a Bazel `py_test` runs one
Python main. Each `py_test` in the top-level BUILD therefore uses this file
as its `main` and passes its own test file(s) as `args` (paths relative to
the repository root; see tools/bazel_support/pytest.bzl):

    py_test(
        name = 'layouts_test',
        srcs = ['tests/bazel_pytest_main.py', 'tests/data/layouts_test.py'],
        main = 'tests/bazel_pytest_main.py',
        args = ['tests/data/layouts_test.py'],
        data = ['pyproject.toml', 'tests/__init__.py', 'tests/conftest.py',
                'tests/data/__init__.py'],
        deps = [':layouts'],
    )

Bazel starts a test in the repository's runfiles directory, so those paths
resolve there, and so do `pyproject.toml` (pytest settings: markers,
`addopts`) and `tests/conftest.py` when the target lists them in `data`.
Under Bazel this adds:

* `-p no:cacheprovider`: no `.pytest_cache` written into the runfiles.
* `--basetemp=$TEST_TMPDIR/pytest`: `tmp_path` lives in Bazel's per-test
  scratch directory.
* `--junitxml=$XML_OUTPUT_FILE`: per-test-case results in Bazel's test.xml.
* `bazel test --test_filter=EXPR` becomes `-k EXPR`.

Exit status is pytest's, except that "no tests collected" (5, e.g. a file
whose tests are all deselected by `-m 'not gpu'`) counts as success.
"""

import os
import sys

import pytest

_NO_TESTS_COLLECTED = 5


def _bazel_args() -> list[str]:
  args = ['-p', 'no:cacheprovider']
  if os.path.isfile('pyproject.toml'):
    args += ['-c', 'pyproject.toml', '--rootdir', os.getcwd()]
  tmpdir = os.environ.get('TEST_TMPDIR')
  if tmpdir:
    args += ['--basetemp', os.path.join(tmpdir, 'pytest')]
  xml_output = os.environ.get('XML_OUTPUT_FILE')
  if xml_output:
    args += ['--junitxml', xml_output]
  test_filter = os.environ.get('TESTBRIDGE_TEST_ONLY')
  if test_filter:
    args += ['-k', test_filter]
  return args


def _drop_source_dir_from_path() -> None:
  # Python puts the directory of the main script on sys.path after resolving
  # symlinks, i.e. the source tree's tests/ rather than its runfiles copy.
  here = os.path.dirname(os.path.realpath(__file__))
  if sys.path and sys.path[0] == here:
    del sys.path[0]


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print(f'usage: {argv[0]} TEST_FILE... [PYTEST_ARGS...]', file=sys.stderr)
    return 2
  _drop_source_dir_from_path()
  code = pytest.main([*argv[1:], *_bazel_args()])
  if code == _NO_TESTS_COLLECTED:
    print('bazel_pytest_main: no tests selected; counting as passed.')
    return 0
  return int(code)


if __name__ == '__main__':
  sys.exit(main(sys.argv))
