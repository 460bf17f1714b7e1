r"""Scores a saved model on prepared cases: per-case CSV, summary, figure.

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
`--overlap`, `--blending`, `--sigma_scale`, `--probability_threshold` and
`--window_batch_size` set the rest of the sliding window (flags shared
with predict.py, in `experiments/shared_flags.py`).

Writes `<output_dir>/per_case.csv` (case, region, Dice, HD95 in mm),
`summary.json` (mean, median and std per region) and `cases.png` (image,
ground truth and prediction of the first `--num_figure_cases` cases).
"""

from __future__ import annotations

from collections.abc import Sequence
import os
from typing import Any

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.evaluation import evaluate

_CASES = flags.DEFINE_string(
  'cases',
  'validation',
  "'validation', 'all', 'client:<id>', or comma-separated case ids.",
)
_NUM_FIGURE_CASES = flags.DEFINE_integer(
  'num_figure_cases', 3, 'Cases drawn in cases.png (0: no figure).'
)


# The shared flags this binary reads; --help lists them with its own.
shared_flags.declare_key_flags(*shared_flags.INFERENCE_FLAGS)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  shared_flags.require('model', 'data_dir', 'output_dir')
  try:
    written = evaluate.run_evaluation(**kwargs_from_flags())
  except (ValueError, FileExistsError) as e:
    raise SystemExit(f'evaluate: error: {e}') from None
  for name, path in written.items():
    print(f'{name}: {os.path.abspath(path)}')


def kwargs_from_flags() -> dict[str, Any]:
  """The keyword arguments of `evaluate.run_evaluation` from the flags.

  Raises:
    ValueError: An inference option is invalid (the message names it).
  """
  return dict(
    model=shared_flags.MODEL.value,
    data_dir=shared_flags.DATA_DIR.value,
    output_dir=shared_flags.OUTPUT_DIR.value,
    cases=_CASES.value,
    options=shared_flags.inference_options(),
    num_figure_cases=_NUM_FIGURE_CASES.value,
    overwrite=shared_flags.OVERWRITE.value,
    progress=shared_flags.PROGRESS.value,
  )


def run_main() -> None:
  """Console entry point."""
  console.run(main)


if __name__ == '__main__':
  console.run(main)
