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

from experiments import shared_flags
from tff_brats.training import centralized

_EPOCHS = flags.DEFINE_integer('epochs', 50, 'Passes over the pooled data.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-4, 'Adam step size.')
_EPOCHS_PER_EVAL = flags.DEFINE_integer(
  'epochs_per_eval', 1, 'Validate every this many epochs.'
)


# The shared flags this binary reads; --help lists them with its own.
for _name in (
  'data_dir',
  'root_output_dir',
  'experiment_name',
  'resume',
  'progress',
  'seed',
  'crop_size',
  'batch_size',
  'crops_per_case',
  'tumour_crop_probability',
  'init_filters',
  'loss',
  'precision',
  'eval_window',
  'eval_overlap',
  'max_eval_cases',
  'num_overlay_cases',
):
  flags.declare_key_flag(_name)


def config_from_flags() -> centralized.CentralizedConfig:
  """The run's configuration from the flags.

  Raises:
    ValueError: A flag value is invalid (the message names it).
  """
  eval_window = shared_flags.EVAL_WINDOW.value
  return centralized.CentralizedConfig(
    data_dir=os.path.abspath(shared_flags.DATA_DIR.value),
    epochs=_EPOCHS.value,
    learning_rate=_LEARNING_RATE.value,
    crop_size=tuple(shared_flags.CROP_SIZE.value),
    batch_size=shared_flags.BATCH_SIZE.value,
    init_filters=shared_flags.INIT_FILTERS.value,
    loss=shared_flags.LOSS.value,
    precision=shared_flags.PRECISION.value,
    tumour_crop_probability=shared_flags.TUMOUR_CROP_PROBABILITY.value,
    crops_per_case=shared_flags.CROPS_PER_CASE.value,
    epochs_per_eval=_EPOCHS_PER_EVAL.value,
    eval_window=None if eval_window is None else tuple(eval_window),
    eval_overlap=shared_flags.EVAL_OVERLAP.value,
    max_eval_cases=shared_flags.MAX_EVAL_CASES.value,
    num_overlay_cases=shared_flags.NUM_OVERLAY_CASES.value,
    seed=shared_flags.seed(),
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
  app.run(main)


if __name__ == '__main__':
  app.run(main)
