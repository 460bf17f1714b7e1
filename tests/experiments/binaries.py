"""Test helper: runs a binary in a child process, as a user runs it.

Every binary's `main` is tested in-process with absl's `flagsaver` (all
binaries import into one process: each flag name is defined once, see
`experiments/shared_flags.py`). Each binary keeps one smoke test through
`run_binary`, which shows that `python -m experiments.<binary>` parses its
command line and runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def run_binary(
  binary: str, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess:
  """Runs `python -m experiments.<binary> *args` from the repository root.

  Args:
    binary: The module name under `experiments`, e.g. 'predict'.
    *args: Its command line.
    timeout: Seconds before the child is killed (the test then fails).

  Returns:
    The finished process, stdout and stderr as text.
  """
  return subprocess.run(
    [sys.executable, '-m', f'experiments.{binary}', *args],
    capture_output=True,
    text=True,
    cwd=_REPO,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
    check=False,
    timeout=timeout,
  )
