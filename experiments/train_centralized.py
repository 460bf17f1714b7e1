r"""Trains the pooled (centralised) baseline on a prepared folder.

Example (the demo's synthetic data, a few minutes on two CPU cores):

  python -m experiments.train_centralized \
    --data_dir=demo_output/prepared --root_output_dir=/tmp/runs \
    --experiment_name=centralized --epochs=8 --crop_size=48,48,48

Outputs go to `<root_output_dir>/<experiment_name>/` (see
`tff_brats.training.centralized`); `--resume` continues an interrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.training import centralized

_EPOCHS = flags.DEFINE_integer('epochs', 50, 'Passes over the pooled data.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-4, 'Adam step size.')
_EPOCHS_PER_EVAL = flags.DEFINE_integer(
  'epochs_per_eval', 1, 'Validate every this many epochs.'
)


# The shared flags this binary reads; --help lists them with its own.
shared_flags.declare_key_flags(
  *shared_flags.RUN_FLAGS, *shared_flags.TRAINER_FLAGS
)


def config_from_flags() -> centralized.CentralizedConfig:
  """The run's configuration from the flags.

  Raises:
    ValueError: A flag value is invalid (the message names it).
  """
  return centralized.CentralizedConfig(
    epochs=_EPOCHS.value,
    learning_rate=_LEARNING_RATE.value,
    epochs_per_eval=_EPOCHS_PER_EVAL.value,
    **shared_flags.trainer_kwargs(),
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  shared_flags.require('data_dir', 'root_output_dir')
  run_dir = os.path.join(
    shared_flags.ROOT_OUTPUT_DIR.value,
    shared_flags.EXPERIMENT_NAME.value or 'centralized',
  )
  try:
    summary = centralized.train_centralized(
      config_from_flags(),
      run_dir,
      resume=shared_flags.RESUME.value,
      progress=shared_flags.PROGRESS.value,
    )
  except ValueError as e:  # bad flags or data; the message says which
    raise SystemExit(f'train_centralized: error: {e}') from None
  print(json.dumps(summary, indent=1, sort_keys=True))
  print(f'Run folder: {run_dir}')


def run_main() -> None:
  """Console entry point."""
  console.run(main)


if __name__ == '__main__':
  console.run(main)
