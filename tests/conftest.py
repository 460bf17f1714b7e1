"""Shared pytest set-up.

* absl flags: binaries under `experiments/` define absl flags at import time;
  pytest never calls `app.run`, so the flags are marked as parsed here (with
  their defaults) and tests that need other values use
  `absl.testing.flagsaver`.
* Markers `slow` and `gpu` are declared in pyproject.toml; the default test
  command deselects `gpu`.
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


def pytest_configure(config):
  del config  # unused
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['pytest'], known_only=True)
