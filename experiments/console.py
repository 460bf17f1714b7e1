"""What the binaries print: progress, one line per round, warnings, results.

By default a binary shows its progress bars, one concise line per round or
epoch, the warnings that matter and its final summary. Two sources of
noise are held back:

* the lines TensorFlow prints while it is imported on a machine without a
  GPU or TensorRT (`E ... Unable to register cuDNN factory`, the TF-TRT
  warning, the CPU-instruction notice), which are harmless but read as
  errors: the import runs with its stderr captured, and every other line
  is passed on (`import_tensorflow_quietly`, called by
  `experiments/__init__.py` when a binary starts);
* absl's and TensorFlow's INFO logs (one per checkpoint, per saved model,
  per worker start): the binaries log at WARNING unless `--verbosity` (absl's
  own flag) is given, e.g. `--verbosity=0` for INFO, `--verbosity=1` for
  debug. TensorFlow's C++ INFO lines are hidden the same way
  (`TF_CPP_MIN_LOG_LEVEL=1` unless set).

The TFF worker's own log stays in the run folder (`logs/`), complete.
"""

from __future__ import annotations

from collections.abc import Callable
import logging as py_logging
import os
import re
import sys
import tempfile

HARMLESS_STDERR = tuple(
  re.compile(pattern)
  for pattern in (
    r'Unable to register cu(DNN|FFT|BLAS) factory',
    r'TF-TRT Warning: Could not find TensorRT',
    r'This TensorFlow binary is optimized to use available CPU instructions',
    r'^To enable the following instructions: .*rebuild TensorFlow',
    r'oneDNN custom operations are on',
    r'Could not find cuda drivers on your machine',
  )
)


def verbose_requested(argv: list[str] | None = None) -> bool:
  """Whether the command line sets `--verbosity` or `-v` itself."""
  argv = sys.argv if argv is None else argv
  return any(
    arg == '-v' or arg.startswith(('--verbosity', '-v=')) for arg in argv[1:]
  )


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with the harmless start-up lines filtered out."""
  if 'tensorflow' in sys.modules:
    return
  if not verbose_requested():
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode('utf-8', errors='replace')
  sys.stderr.write(without_harmless_lines(text))
  sys.stderr.flush()


def without_harmless_lines(text: str) -> str:
  """`text` without the lines of `HARMLESS_STDERR`."""
  return ''.join(
    line
    for line in text.splitlines(keepends=True)
    if not any(pattern.search(line) for pattern in HARMLESS_STDERR)
  )


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with the binaries' quiet defaults (module doc)."""
  from absl import app
  from absl import flags

  if not verbose_requested():
    # Set before parsing, so that a --verbosity on the command line wins.
    flags.FLAGS.verbosity = -1  # absl's WARNING
    py_logging.getLogger('tensorflow').setLevel(py_logging.WARNING)
  app.run(main)
