"""Prepares a folder of BraTS scans as per-institution TFRecord shards.

Examples:

  # Synthetic data, one client per institution, 20% of each held out:
  python -m experiments.prepare_data --data_dir=/tmp/synthetic \
    --output_dir=/tmp/prepared --partition=brats18_institutions \
    --validation_fraction=0.2

  # The paper's setting on BraTS 2018 (13 institutions + 43 validation):
  python -m experiments.prepare_data \
    --data_dir=/data/MICCAI_BraTS_2018_Data_Training \
    --output_dir=/data/brats18_li2019 --partition=brats18_li2019

Writes `<output_dir>/manifest.json` and `<output_dir>/shards/*.tfrecord`
atomically. Re-running with the same flags is a no-op; other flags need
`--overwrite`. See `tff_brats.data.prepare.prepare_dataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
import os

from absl import app
from absl import flags

from tff_brats.data import layouts
from tff_brats.data import partitions
from tff_brats.data import prepare

_DATA_DIR = flags.DEFINE_string(
  'data_dir',
  None,
  'Folder of BraTS cases (2018-2021 or 2023+ layout).',
  required=True,
)
_OUTPUT_DIR = flags.DEFINE_string(
  'output_dir', None, 'Folder to create.', required=True
)
_PARTITION = flags.DEFINE_string(
  'partition',
  'brats18_institutions',
  'How to form clients: ' + ', '.join(partitions.SPEC_FORMS) + '.',
)
_VALIDATION_CASES = flags.DEFINE_string(
  'validation_cases',
  None,
  'File of validation case ids (one per line, or a CSV with Subject_ID), '
  'or a built-in name: ' + ', '.join(partitions.BUILTIN_PARTITIONS) + '.',
)
_VALIDATION_FRACTION = flags.DEFINE_float(
  'validation_fraction',
  None,
  'Fraction of every institution held out as the shared validation set.',
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random partitions.')
_LAYOUT = flags.DEFINE_enum(
  'layout',
  None,
  sorted(layouts.LAYOUTS),
  'Require this layout (default: detect per case).',
)
_CASES_PER_SHARD = flags.DEFINE_integer(
  'cases_per_shard',
  prepare.DEFAULT_CASES_PER_SHARD,
  'Largest number of cases per shard file.',
)
_CROP_MARGIN = flags.DEFINE_integer(
  'crop_margin', 0, 'Voxels kept around the brain bounding box.'
)
_OVERWRITE = flags.DEFINE_bool(
  'overwrite', False, 'Replace a folder prepared with other arguments.'
)
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  try:
    prepared = _prepare()
  except ValueError as e:  # BratsDataError and bad argument values
    # The message names the case, the file and the value; a traceback
    # would only bury it.
    raise SystemExit(f'prepare_data: error: {e}') from None
  print(prepared.partition_table)
  print(f'Manifest: {os.path.join(prepared.root, "manifest.json")}')


def _prepare():
  return prepare.prepare_dataset(
    _DATA_DIR.value,
    _OUTPUT_DIR.value,
    partition=_PARTITION.value,
    validation_cases=_VALIDATION_CASES.value,
    validation_fraction=_VALIDATION_FRACTION.value,
    seed=_SEED.value,
    layout=_LAYOUT.value,
    cases_per_shard=_CASES_PER_SHARD.value,
    crop_margin=_CROP_MARGIN.value,
    overwrite=_OVERWRITE.value,
    progress=_PROGRESS.value,
  )


def run_main() -> None:
  """Console entry point."""
  app.run(main)


if __name__ == '__main__':
  app.run(main)
