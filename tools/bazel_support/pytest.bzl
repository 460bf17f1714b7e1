"""`pytest_test`: a py_test that runs one pytest-style test file.

Usage in the top-level BUILD:

    load("//tools/bazel_support:pytest.bzl", "pytest_test")

    pytest_test(
        name = "layouts_test",
        src = "tests/data/layouts_test.py",
        deps = [":layouts"],
    )

expands to

    py_test(
        name = "layouts_test",
        srcs = ["tests/bazel_pytest_main.py", "tests/data/layouts_test.py"],
        main = "tests/bazel_pytest_main.py",
        args = ["tests/data/layouts_test.py"],
        data = ["pyproject.toml", "tests/__init__.py", "tests/conftest.py",
                "tests/data/__init__.py"],   # those of them that exist
        deps = [":layouts"],
        python_version = "PY3",
        srcs_version = "PY3",
    )

The `data` part puts pytest's settings (pyproject.toml) and every
`__init__.py` / `conftest.py` on the way from the repository root to the
test file into the runfiles. Extra keyword arguments (size, tags, timeout,
flaky, ...) go to py_test; `args` are appended to the test file as pytest
arguments. Test sharding (shard_count) is not supported: every shard would
run the whole file. Call it from the top-level package only (paths are
relative to the repository root).
"""

_MAIN = "tests/bazel_pytest_main.py"

def _support_files(src):
    """pyproject.toml and the __init__.py / conftest.py files above `src`."""
    candidates = ["pyproject.toml"]
    parts = src.split("/")[:-1]
    for i in range(len(parts)):
        folder = "/".join(parts[:i + 1])
        candidates.append(folder + "/__init__.py")
        candidates.append(folder + "/conftest.py")
    return native.glob(candidates, allow_empty = True)

def pytest_test(name, src, deps = [], data = [], args = [], **kwargs):
    """A py_test running the pytest-style test file `src` (see module doc)."""
    native.py_test(
        name = name,
        srcs = [_MAIN, src],
        main = _MAIN,
        args = [src] + args,
        data = _support_files(src) + data,
        deps = deps,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
