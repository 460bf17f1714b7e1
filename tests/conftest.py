"""Shared pytest set-up.

* absl flags: binaries under `experiments/` define absl flags at import time;
  pytest never calls `app.run`, so the flags are marked as parsed here (with
  their defaults) and tests that need other values use
  `absl.testing.flagsaver`.
* Markers `slow` and `gpu` are declared in pyproject.toml; the default test
  command deselects `gpu`.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags


def pytest_configure(config):
  del config  # unused
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['pytest'], known_only=True)
