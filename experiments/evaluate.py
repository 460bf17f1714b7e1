"""Scores a saved model on prepared cases: per-case CSV, summary, figure.

Example:

  python -m experiments.evaluate --model=/tmp/runs/centralized/best_model \
    --data_dir=demo_output/prepared --output_dir=/tmp/eval

`--model` is a model folder written by training (`best_model/`,
`final_model/`) or a SavedModel from `export_model.py`. By default the
validation cases are scored; `--cases=all` scores every prepared case,
`--cases=client:<id>` one client's, and `--cases=<id>,<id>,...` a list.

Without `--window`, windows are the model's recorded training crop; an
explicit `--window` that differs from it is used with a warning naming
both, and a model that records nothing gets 64³ windows, with a warning.

Writes `<output_dir>/per_case.csv` (case, region, Dice, HD95 in mm),
`summary.json` (mean, median and std per region) and `cases.png` (image,
ground truth and prediction of the first `--num_figure_cases` cases).
"""

from __future__ import annotations

from collections.abc import Sequence
import os

from absl import app
from absl import flags

from experiments import flag_types
from tff_brats.evaluation import evaluate
from tff_brats.inference import options as options_lib

_MODEL = flags.DEFINE_string(
  'model', None, 'Model folder or exported SavedModel.', required=True
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir', None, 'Output folder of prepare_data.', required=True
)
_OUTPUT_DIR = flags.DEFINE_string(
  'output_dir', None, 'Where to write the scores.', required=True
)
_CASES = flags.DEFINE_string(
  'cases',
  'validation',
  "'validation', 'all', 'client:<id>', or comma-separated case ids.",
)
_WINDOW = flag_types.DEFINE_int_list(
  'window',
  None,
  "Sliding-window size D,H,W (or one size). Default: the model's recorded "
  f'training crop ({",".join(map(str, evaluate.DEFAULT_WINDOW))} if it records '
  'none).',
)
_OVERLAP = flags.DEFINE_float('overlap', 0.5, 'Window overlap in [0, 1).')
_BLENDING = flags.DEFINE_enum(
  'blending', 'gaussian', ['gaussian', 'constant'], 'Window blending.'
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Windows per call.')
_THRESHOLD = flags.DEFINE_float(
  'threshold', 0.5, 'Probability at or above which a voxel is in a region.'
)
_NUM_FIGURE_CASES = flags.DEFINE_integer(
  'num_figure_cases', 3, 'Cases drawn in cases.png (0: no figure).'
)
_OVERWRITE = flags.DEFINE_bool(
  'overwrite', False, 'Replace existing score files.'
)
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  window = _WINDOW.value
  if window is not None and len(window) == 1:
    window = window[0]
  try:
    options = options_lib.InferenceOptions(
      window=window,
      overlap=_OVERLAP.value,
      blending=_BLENDING.value,
      batch_size=_BATCH_SIZE.value,
      threshold=_THRESHOLD.value,
    )
    written = evaluate.run_evaluation(
      model=_MODEL.value,
      data_dir=_DATA_DIR.value,
      output_dir=_OUTPUT_DIR.value,
      cases=_CASES.value,
      options=options,
      num_figure_cases=_NUM_FIGURE_CASES.value,
      overwrite=_OVERWRITE.value,
      progress=_PROGRESS.value,
    )
  except (ValueError, FileExistsError) as e:
    raise SystemExit(f'evaluate: error: {e}') from None
  for name, path in written.items():
    print(f'{name}: {os.path.abspath(path)}')


def run_main() -> None:
  """Console entry point."""
  app.run(main)


if __name__ == '__main__':
  app.run(main)
