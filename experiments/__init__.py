"""The project's binaries (`python -m experiments.<name>`).

A binary started from the command line imports TensorFlow quietly before
anything else (see `experiments/console.py`); imported as a library (tests,
notebooks) this package changes nothing.
"""

import os as _os
import sys as _sys


def _started_as_a_binary() -> bool:
  # `python -m experiments.x` imports this package while sys.argv[0] is
  # still '-m'; the console scripts are named tff-brats-*.
  program = _os.path.basename(_sys.argv[0]) if _sys.argv else ''
  return program == '-m' or program.startswith('tff-brats-')


if _started_as_a_binary():
  from experiments import console as _console

  _console.import_tensorflow_quietly()
