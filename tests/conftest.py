"""Shared pytest set-up.

* absl flags: binaries under `experiments/` define absl flags at import time;
  pytest never calls `app.run`, so the flags are marked as parsed here (with
  their defaults) and tests that need other values use
  `absl.testing.flagsaver`.
* Markers `slow` and `gpu` are declared in pyproject.toml; the default test
  command deselects `gpu`.
* `tff_runtime`: one TFF runtime (`LocalRuntime`, one C++ worker) shared by
  every test in the session that only runs computations on it, made TFF's
  default context again before each such test (another test's own runtime
  removes it when it closes); the session checks its worker is gone at the
  end.
* gRPC's fork handlers are switched off (before anything imports grpc), for
  this process and the children it starts. One pytest process starts and
  closes many TFF runtimes, and each start forks a worker
  (`subprocess.Popen` with a `preexec_fn`: a real fork, which runs
  pthread_atfork handlers). After earlier runtimes' channels, gRPC's
  pre-fork handler can hang that fork for good (seen once in
  tests/runtime/local_test.py: the main thread waiting inside gRPC's
  handler under __libc_fork; a known gRPC problem, grpc/grpc#37259). The
  handlers only serve children that use gRPC after a fork without exec;
  every child here execs.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('GRPC_ENABLE_FORK_SUPPORT', 'false')

from absl import flags
import pytest


@pytest.fixture(scope='session')
def _shared_tff_runtime(tmp_path_factory):
  from tests import testing_utils
  from tff_brats.runtime import local

  log_dir = tmp_path_factory.mktemp('shared_tff_runtime')
  with local.LocalRuntime(log_dir=str(log_dir)) as runtime:
    pid = runtime.worker_pid
    testing_utils.SESSION_WORKER_PIDS.add(pid)
    yield runtime
  testing_utils.SESSION_WORKER_PIDS.discard(pid)
  assert testing_utils.wait_process_gone(pid), (
    f'TFF worker {pid} survived the shared runtime'
  )


@pytest.fixture
def tff_runtime(_shared_tff_runtime):
  """The session's TFF runtime, installed as TFF's default context."""
  _shared_tff_runtime.activate()
  return _shared_tff_runtime


# The longest test files (minutes each, `make test`'s --durations), started
# first; then the other files with `slow` tests; then the rest.
_LONGEST_FIRST = (
  'tests/training/federated_test.py',
  'tests/training/federated_loop_test.py',
  'tests/training/centralized_test.py',
  'tests/privacy/sparse_vector_test.py',
  'tests/experiments/train_centralized_test.py',
)


def pytest_collection_modifyitems(config, items):
  """Orders whole test files longest first (scheduling only).

  `make test` runs pytest on two workers (pytest-xdist, one file per worker
  at a time); starting the longest files first keeps one worker from being
  left with a long file at the end. Each file's tests stay together and in
  order.
  """
  del config  # unused
  slow_files = {item.path for item in items if item.get_closest_marker('slow')}

  def rank(item):
    relative = item.nodeid.split('::')[0]
    if relative in _LONGEST_FIRST:
      return (0, _LONGEST_FIRST.index(relative))
    return (1, 0) if item.path in slow_files else (2, 0)

  items.sort(key=rank)


def pytest_configure(config):
  del config  # unused
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['pytest'], known_only=True)
