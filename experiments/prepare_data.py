r"""Prepares a folder of BraTS scans as per-institution TFRecord shards.

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
from typing import Any

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.data import partitions
from tff_brats.data import prepare

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
_CASES_PER_SHARD = flags.DEFINE_integer(
  'cases_per_shard',
  prepare.DEFAULT_CASES_PER_SHARD,
  'Largest number of cases per shard file.',
)

# Without --crop_margin: the brain bounding box itself (the library's
# default, and the margin inference assumes for models that record none).
_DEFAULT_CROP_MARGIN = 0


# The shared flags this binary reads; --help lists them with its own.
shared_flags.declare_key_flags(
  'data_dir',
  'output_dir',
  'seed',
  'layout',
  'crop_margin',
  'overwrite',
  'progress',
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  shared_flags.require('data_dir', 'output_dir')
  try:
    prepared = prepare.prepare_dataset(**kwargs_from_flags())
  except ValueError as e:  # BratsDataError and bad argument values
    # The message names the case, the file and the value; a traceback
    # would only bury it.
    raise SystemExit(f'prepare_data: error: {e}') from None
  print(prepared.partition_table)
  print(f'Manifest: {os.path.join(prepared.root, "manifest.json")}')


def kwargs_from_flags() -> dict[str, Any]:
  """The keyword arguments of `prepare.prepare_dataset` from the flags."""
  crop_margin = shared_flags.CROP_MARGIN.value
  return dict(
    data_dir=shared_flags.DATA_DIR.value,
    output_dir=shared_flags.OUTPUT_DIR.value,
    partition=_PARTITION.value,
    validation_cases=_VALIDATION_CASES.value,
    validation_fraction=_VALIDATION_FRACTION.value,
    seed=shared_flags.SEED.value,
    layout=shared_flags.LAYOUT.value,
    cases_per_shard=_CASES_PER_SHARD.value,
    crop_margin=_DEFAULT_CROP_MARGIN if crop_margin is None else crop_margin,
    overwrite=shared_flags.OVERWRITE.value,
    progress=shared_flags.PROGRESS.value,
  )


def run_main() -> None:
  """Console entry point."""
  console.run(main)


if __name__ == '__main__':
  console.run(main)
