"""Segments BraTS cases with a trained model and writes NIfTI label maps.

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
128³ window and margin 0, with a warning. See `tff_brats.inference.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import flags

from tff_brats.data import layouts
from tff_brats.inference import options as options_lib
from tff_brats.inference import predict
from tff_brats.inference import sliding_window

_MODALITY_FLAGS = tuple(
  dict.fromkeys(m for lay in layouts.LAYOUTS.values() for m in lay.modalities)
)

_MODEL = flags.DEFINE_string(
  'model',
  None,
  'An exported SavedModel folder (experiments/export_model.py) or a '
  'model_io folder.',
  required=True,
)
_OUTPUT_DIR = flags.DEFINE_string(
  'output_dir', None, 'Where <case_id>.nii.gz files go.', required=True
)
_CASE_DIR = flags.DEFINE_string('case_dir', None, 'One BraTS case folder.')
_DATA_DIR = flags.DEFINE_string(
  'data_dir', None, 'A folder of BraTS case folders.'
)
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
_WINDOW = flags.DEFINE_list(
  'window',
  None,
  "Sliding-window size D,H,W (or one size), a multiple of the model's "
  "size multiple (8 for SegResNet). Default: the model's recorded training "
  f'crop ({",".join(map(str, options_lib.DEFAULT_WINDOW))} if it records '
  'none).',
)
_OVERLAP = flags.DEFINE_float(
  'overlap', sliding_window.DEFAULT_OVERLAP, 'Window overlap in [0, 1).'
)
_BLENDING = flags.DEFINE_enum(
  'blending',
  'gaussian',
  list(sliding_window.BLENDING_MODES),
  'How overlapping windows are blended.',
)
_SIGMA_SCALE = flags.DEFINE_float(
  'sigma_scale',
  sliding_window.DEFAULT_SIGMA_SCALE,
  'Gaussian blending sigma as a fraction of the window size.',
)
_THRESHOLD = flags.DEFINE_float(
  'threshold',
  sliding_window.DEFAULT_THRESHOLD,
  'Region probability at or above which a voxel is in the region.',
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Windows per network call.')
_OUTPUT_LAYOUT = flags.DEFINE_enum(
  'output_layout',
  None,
  sorted(layouts.LAYOUTS),
  "Label convention of the outputs (default: each case's own).",
)
_CROP_MARGIN = flags.DEFINE_integer(
  'crop_margin',
  None,
  'Voxels kept around the brain box, as prepare_data --crop_margin. '
  "Default: the crop margin of the model's training data (0 if the model "
  'records none).',
)
_OVERWRITE = flags.DEFINE_bool(
  'overwrite', False, 'Replace existing output files.'
)
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  image_paths = {
    name: flag.value for name, flag in _MODALITIES.items() if flag.value
  }
  window = None if _WINDOW.value is None else _parse_window(_WINDOW.value)
  try:
    options = options_lib.InferenceOptions(
      window=window,
      overlap=_OVERLAP.value,
      blending=_BLENDING.value,
      sigma_scale=_SIGMA_SCALE.value,
      threshold=_THRESHOLD.value,
      batch_size=_BATCH_SIZE.value,
      output_layout=_OUTPUT_LAYOUT.value,
      crop_margin=_CROP_MARGIN.value,
    )
    written = predict.run_prediction(
      model=_MODEL.value,
      output_dir=_OUTPUT_DIR.value,
      case_dir=_CASE_DIR.value,
      image_paths=image_paths or None,
      case_id=_CASE_ID.value,
      data_dir=_DATA_DIR.value,
      options=options,
      overwrite=_OVERWRITE.value,
      progress=_PROGRESS.value,
    )
  except (ValueError, FileExistsError) as e:
    # BratsDataError (a ValueError) names the case, the file and the value;
    # a traceback would only bury it.
    raise SystemExit(f'predict: error: {e}') from None
  for path in written:
    print(path)
  print(f'Wrote {len(written)} segmentation(s) to {_OUTPUT_DIR.value}.')


def _parse_window(values: list[str]) -> int | tuple[int, ...]:
  try:
    sizes = tuple(int(v) for v in values)
  except ValueError:
    raise app.UsageError(
      f'--window must be 1 or 3 comma-separated integers. Found '
      f'{",".join(values)!r}.'
    ) from None
  return sizes[0] if len(sizes) == 1 else sizes


def run_main() -> None:
  """Console entry point."""
  app.run(main)


if __name__ == '__main__':
  app.run(main)
