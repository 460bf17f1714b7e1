"""Trains the pooled (centralised) baseline on a prepared folder.

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

from experiments import flag_types
from tff_brats.training import centralized

_DATA_DIR = flags.DEFINE_string(
  'data_dir', None, 'Output folder of prepare_data.', required=True
)
_ROOT_OUTPUT_DIR = flags.DEFINE_string(
  'root_output_dir', None, 'Folder of all runs.', required=True
)
_EXPERIMENT_NAME = flags.DEFINE_string(
  'experiment_name', 'centralized', 'This run: <root_output_dir>/<name>.'
)
_EPOCHS = flags.DEFINE_integer('epochs', 50, 'Passes over the pooled data.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-4, 'Adam step size.')
_CROP_SIZE = flag_types.DEFINE_int_list(
  'crop_size', [64, 64, 64], 'Training crop D,H,W (multiples of 8).'
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Crops per step.')
_INIT_FILTERS = flags.DEFINE_integer(
  'init_filters', 16, "SegResNet's initial filters."
)
_LOSS = flags.DEFINE_enum(
  'loss', 'dice', list(centralized.LOSSES), 'Soft Dice, or Dice + BCE.'
)
_PRECISION = flags.DEFINE_enum(
  'precision',
  'float32',
  ['float32', 'mixed_float16', 'mixed_bfloat16'],
  'Compute precision (mixed_float16 for GPUs).',
)
_TUMOUR_CROP_PROBABILITY = flags.DEFINE_float(
  'tumour_crop_probability',
  1 / 3,
  'Probability that a training crop is centred on tumour.',
)
_CROPS_PER_CASE = flags.DEFINE_integer(
  'crops_per_case', 1, 'Crops per case read.'
)
_EPOCHS_PER_EVAL = flags.DEFINE_integer(
  'epochs_per_eval', 1, 'Validate every this many epochs.'
)
_EVAL_WINDOW = flag_types.DEFINE_int_list(
  'eval_window', None, 'Sliding-window size (default: --crop_size).'
)
_EVAL_OVERLAP = flags.DEFINE_float('eval_overlap', 0.5, 'Window overlap.')
_MAX_EVAL_CASES = flags.DEFINE_integer(
  'max_eval_cases', None, 'Validate on at most this many cases.'
)
_NUM_OVERLAY_CASES = flags.DEFINE_integer(
  'num_overlay_cases', 2, 'Validation cases drawn in TensorBoard.'
)
_SEED = flags.DEFINE_integer(
  'seed', 0, 'Seed of crops, augmentation and weights (-1: fresh).'
)
_RESUME = flags.DEFINE_bool('resume', False, 'Continue an interrupted run.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show progress bars.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  try:
    config = centralized.CentralizedConfig(
      data_dir=os.path.abspath(_DATA_DIR.value),
      epochs=_EPOCHS.value,
      learning_rate=_LEARNING_RATE.value,
      crop_size=tuple(_CROP_SIZE.value),
      batch_size=_BATCH_SIZE.value,
      init_filters=_INIT_FILTERS.value,
      loss=_LOSS.value,
      precision=_PRECISION.value,
      tumour_crop_probability=_TUMOUR_CROP_PROBABILITY.value,
      crops_per_case=_CROPS_PER_CASE.value,
      epochs_per_eval=_EPOCHS_PER_EVAL.value,
      eval_window=(
        None if _EVAL_WINDOW.value is None else tuple(_EVAL_WINDOW.value)
      ),
      eval_overlap=_EVAL_OVERLAP.value,
      max_eval_cases=_MAX_EVAL_CASES.value,
      num_overlay_cases=_NUM_OVERLAY_CASES.value,
      seed=None if _SEED.value < 0 else _SEED.value,
    )
    run_dir = os.path.join(_ROOT_OUTPUT_DIR.value, _EXPERIMENT_NAME.value)
    summary = centralized.train_centralized(
      config, run_dir, resume=_RESUME.value, progress=_PROGRESS.value
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
