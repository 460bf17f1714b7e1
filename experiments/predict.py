r"""Segments BraTS cases with a trained model and writes NIfTI label maps.

Examples:

  # Every case under a folder (BraTS 2018-2021 or 2023+ layout):
  python -m experiments.predict --model=/runs/exp1/saved_model \
    --data_dir=/data/BraTS2021_Validation --output_dir=/tmp/submission

  # One case folder:
  python -m experiments.predict --model=/runs/exp1/model \
    --case_dir=/data/BraTS2021_00001 --output_dir=/tmp/seg

  # Four explicit files (or --t1n/--t1c/--t2w/--t2f):
  python -m experiments.predict --model=/runs/exp1/saved_model \
    --t1=a_t1.nii.gz --t1ce=a_t1ce.nii.gz --t2=a_t2.nii.gz \
    --flair=a_flair.nii.gz --case_id=a --output_dir=/tmp/seg

Writes `<output_dir>/<case_id>.nii.gz` (the BraTS submission name) per case,
uint8 labels of the case's convention (0/1/2/4 or 0/1/2/3; see
`--output_layout`) with the first modality's affine and header. An existing
output is never replaced without `--overwrite`. `--model` is a SavedModel
from experiments/export_model.py or a model_io folder.

Without `--window` and `--crop_margin`, the model's recorded training crop
and crop margin are used; an explicit value that differs from the record is
used with a warning naming both, and a model that records nothing gets a
128³ window and margin 0, with a warning. `--overlap`, `--blending`,
`--sigma_scale`, `--probability_threshold` and `--window_batch_size` set
the rest of the sliding window (flags shared with evaluate.py, in
`experiments/shared_flags.py`). See `tff_brats.inference.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.data import layouts
from tff_brats.inference import predict

_MODALITY_FLAGS = tuple(
  dict.fromkeys(m for lay in layouts.LAYOUTS.values() for m in lay.modalities)
)

_CASE_DIR = flags.DEFINE_string('case_dir', None, 'One BraTS case folder.')
_MODALITIES = {
  name: flags.DEFINE_string(
    name,
    None,
    f'The {name} file of one case (all four modalities of one layout: '
    + ' or '.join(','.join(lay.modalities) for lay in layouts.LAYOUTS.values())
    + ').',
  )
  for name in _MODALITY_FLAGS
}
_CASE_ID = flags.DEFINE_string(
  'case_id',
  None,
  'Case id of the explicit modality files (default: from their names).',
)
_OUTPUT_LAYOUT = flags.DEFINE_enum(
  'output_layout',
  None,
  sorted(layouts.LAYOUTS),
  "Label convention of the outputs (default: each case's own).",
)


# The shared flags this binary reads; --help lists them with its own.
shared_flags.declare_key_flags(*shared_flags.INFERENCE_FLAGS, 'crop_margin')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  shared_flags.require('model', 'output_dir')
  try:
    written = predict.run_prediction(**kwargs_from_flags())
  except (ValueError, FileExistsError) as e:
    # BratsDataError (a ValueError) names the case, the file and the value;
    # a traceback would only bury it.
    raise SystemExit(f'predict: error: {e}') from None
  for path in written:
    print(path)
  output_dir = shared_flags.OUTPUT_DIR.value
  print(f'Wrote {len(written)} segmentation(s) to {output_dir}.')


def kwargs_from_flags() -> dict[str, Any]:
  """The keyword arguments of `predict.run_prediction` from the flags.

  Raises:
    ValueError: An inference option is invalid (the message names it).
  """
  image_paths = {
    name: flag.value for name, flag in _MODALITIES.items() if flag.value
  }
  return dict(
    model=shared_flags.MODEL.value,
    output_dir=shared_flags.OUTPUT_DIR.value,
    case_dir=_CASE_DIR.value,
    image_paths=image_paths or None,
    case_id=_CASE_ID.value,
    data_dir=shared_flags.DATA_DIR.value,
    options=shared_flags.inference_options(
      output_layout=_OUTPUT_LAYOUT.value,
      crop_margin=shared_flags.CROP_MARGIN.value,
    ),
    overwrite=shared_flags.OVERWRITE.value,
    progress=shared_flags.PROGRESS.value,
  )


def run_main() -> None:
  """Console entry point."""
  console.run(main)


if __name__ == '__main__':
  console.run(main)
