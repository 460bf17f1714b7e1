"""Segments one BraTS case with a network, in the case's own voxel grid.

The path of a case through inference is the path of a training case through
`prepare` and `pipeline`, by the same code:

1. `reader.load_case(require_label=False)`: the four modalities, with every
   check of the reader (readable, complete NIfTI, 3-D, finite, one voxel
   grid). A segmentation next to the images is not read: prediction does
   not need it.
2. Crop to `prepare.brain_bounding_box` with the `crop_margin` the training
   data were prepared with (the model's record, or the options), the crop
   the stored training cases have.
3. `pipeline.normalize_intensity`: per-modality z-score over the brain.
4. `sliding_window.sliding_window_inference` with the network, with windows
   of the training crop unless the options say otherwise.
5. Threshold the (TC, WT, ET) probabilities and convert them to labels of
   the case's convention (or `output_layout`): 0/1/2/4 for BraTS 2018-2021,
   0/1/2/3 for 2023+.
6. Paste the crop back into a zero volume of the loaded shape, and map it
   back to the files' own grid (`reader.LoadedCase.to_source_grid`: the
   reader puts every case in the BraTS orientation, so a scan stored in
   another orientation gets its labels back in its own axes, matching its
   affine and header).

`predict_case` does this from NIfTI files; `predict_prepared_case` from a
case already cropped by `prepare` (steps 3 to 6, for evaluation). Both take
an `options.InferenceOptions`; options not yet resolved for the predictor
are resolved here (see `options.resolve_for`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf

from tff_brats.data import errors
from tff_brats.data import layouts
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import pipeline
from tff_brats.data import prepare
from tff_brats.data import reader
from tff_brats.data import records
from tff_brats.inference import options as options_lib
from tff_brats.inference import sliding_window

Box = tuple[tuple[int, int], ...]


@dataclasses.dataclass
class CasePrediction:
  """The segmentation of one case, in its original voxel grid.

  Attributes:
    case_id: The case id.
    labels: uint8 `[D, H, W]` on the files' own grid, labels of `layout`;
      0 outside the crop box.
    layout: The label convention of `labels`.
    crop_box: The brain bounding box the network ran on, in the grid the
      reader returns (the BraTS orientation; the files' own grid unless
      they are stored in another orientation).
    probabilities: float32 `[D, H, W, 3]` (TC, WT, ET) on the files' own
      grid, 0 outside the crop box, or None unless asked for.
  """

  case_id: str
  labels: np.ndarray
  layout: layouts.Layout
  crop_box: Box
  probabilities: np.ndarray | None = None


def predict_case(
  predictor: Callable[[np.ndarray], Any],
  case: reader.Case,
  options: options_lib.InferenceOptions | None = None,
  *,
  return_probabilities: bool = False,
) -> CasePrediction:
  """Segments one case from its NIfTI files (see the module doc's steps).

  Args:
    predictor: A `predictors.Predictor` (or any function of normalised
      window batches).
    case: The case (from `reader.discover_cases`, `case_from_directory` or
      `case_from_files`).
    options: How to segment; None means `InferenceOptions()` (the
      predictor's training crop and crop margin).
    return_probabilities: Whether to return the probabilities too.

  Returns:
    The `CasePrediction`.

  Raises:
    BratsDataError: Bad input files (see `reader.load_case`) or a case
      whose four modalities are all zero.
    ValueError: Bad options (before any file is read).
  """
  options = options_lib.resolve_for(options, predictor)
  layout = _output_layout(options.output_layout, case.layout)
  loaded = reader.load_case(
    dataclasses.replace(case, label_path=None), require_label=False
  )
  _warn_if_not_brats_voxels(case, loaded.spacing)
  try:
    box = prepare.brain_bounding_box(loaded.image, margin=options.crop_margin)
  except ValueError as e:
    raise errors.BratsDataError(
      f'{e} A case must have brain voxels to segment.',
      case_id=case.case_id,
      path=case.image_paths[0],
    ) from e
  cropped = loaded.image[_slices(box)]
  probabilities = _predict_normalised(
    predictor, pipeline.normalize_intensity(cropped).numpy(), options
  )
  labels = sliding_window.probabilities_to_labels(
    probabilities, layout, threshold=options.threshold
  )
  return CasePrediction(
    case_id=case.case_id,
    labels=loaded.to_source_grid(paste_crop(labels, box, loaded.shape)),
    layout=layout,
    crop_box=box,
    probabilities=(
      loaded.to_source_grid(paste_crop(probabilities, box, loaded.shape))
      if return_probabilities
      else None
    ),
  )


@dataclasses.dataclass
class PreparedCasePrediction:
  """The prediction of a prepared (cropped) case, in both grids.

  Attributes:
    case_id: The case id.
    crop_box: Where the cropped grid lies in the original grid.
    shape: The original grid's shape `(D, H, W)`.
    cropped_probabilities: float32 `[d, h, w, 3]` (TC, WT, ET).
    cropped_regions: bool `[d, h, w, 3]`, the thresholded probabilities.
    regions: bool `[D, H, W, 3]`, `cropped_regions` pasted into the
      original grid (False outside the crop box).
    labels: uint8 `[D, H, W]`, labels of `layout` in the original grid.
    layout: The label convention of `labels`.
  """

  case_id: str
  crop_box: Box
  shape: tuple[int, int, int]
  cropped_probabilities: np.ndarray
  cropped_regions: np.ndarray
  regions: np.ndarray
  labels: np.ndarray
  layout: layouts.Layout


def predict_prepared_case(
  predictor: Callable[[np.ndarray], Any],
  case: bytes | tf.Tensor | Mapping[str, Any],
  case_record: manifest_lib.CaseRecord,
  options: options_lib.InferenceOptions | None = None,
  *,
  normalized: bool = False,
) -> PreparedCasePrediction:
  """Segments a case stored in prepared shards (for evaluation).

  The stored image is already the brain crop (with the prepared folder's
  crop margin; `options.crop_margin` does not apply); it is normalised
  (unless `normalized`) and run through the sliding window exactly as
  `predict_case` does, and the result is also pasted into the original
  voxel grid with `case_record.crop_box` and `shape`, where scoring against
  the original segmentation happens.

  Args:
    predictor: A `predictors.Predictor` (or any function of normalised
      window batches).
    case: A serialised record (bytes or a scalar `tf.string` tensor), or a
      parsed one: a mapping with `image` (`[d, h, w, 4]`) and optionally
      `case_id`, from `records.parse_case` (raw intensities) or
      `pipeline.make_evaluation_dataset` (normalised: pass
      `normalized=True`).
    case_record: The case's manifest entry.
    options: See `predict_case`; `output_layout` None uses
      `case_record.layout`.
    normalized: Whether a parsed `image` is already normalised.

  Returns:
    The `PreparedCasePrediction`.

  Raises:
    ValueError: Bad options, or a record that does not match `case_record`
      (case id or cropped shape).
  """
  options = options_lib.resolve_for(options, predictor)
  layout = _output_layout(
    options.output_layout, layouts.get_layout(case_record.layout)
  )
  if isinstance(case, bytes | tf.Tensor):
    if normalized:
      raise ValueError(
        'normalized must be False for a serialised record (records hold raw '
        'intensities). Found True.'
      )
    case = records.parse_case(case)
  if not isinstance(case, Mapping) or 'image' not in case:
    raise ValueError(
      'case must be a serialised record or a mapping with an "image". '
      f'Found {type(case).__name__}.'
    )
  _check_matches_record(case, case_record)
  image = tf.convert_to_tensor(case['image'], tf.float32)
  if not normalized:
    image = pipeline.normalize_intensity(image)
  probabilities = _predict_normalised(predictor, image.numpy(), options)
  regions = sliding_window.threshold(probabilities, options.threshold)
  box, shape = case_record.crop_box, tuple(case_record.shape)
  return PreparedCasePrediction(
    case_id=case_record.case_id,
    crop_box=box,
    shape=shape,
    cropped_probabilities=probabilities,
    cropped_regions=regions,
    regions=paste_crop(regions, box, shape),
    labels=paste_crop(layouts.regions_to_labels(regions, layout), box, shape),
    layout=layout,
  )


def paste_crop(
  cropped: np.ndarray, crop_box: Sequence[Sequence[int]], shape: Sequence[int]
) -> np.ndarray:
  """Places a cropped volume at `crop_box` in a zero volume of `shape`.

  Args:
    cropped: `[d, h, w, ...]`, the box's size in the first three axes.
    crop_box: `((start, stop),) * 3` in the original grid.
    shape: The original `(D, H, W)`.

  Returns:
    `[D, H, W, ...]` of `cropped`'s dtype, zero (False) outside the box.
  """
  cropped = np.asarray(cropped)
  box = tuple((int(a), int(b)) for a, b in crop_box)
  shape = tuple(int(n) for n in shape)
  sizes = tuple(b - a for a, b in box)
  if (
    len(box) != 3
    or len(shape) != 3
    or not all(0 <= a < b <= n for (a, b), n in zip(box, shape, strict=True))
  ):
    raise ValueError(
      f'crop_box must be 3 (start, stop) pairs inside shape {shape}. '
      f'Found {box}.'
    )
  if cropped.shape[:3] != sizes:
    raise ValueError(
      f'cropped must have the crop box size {sizes} in its first three '
      f'axes. Found shape {cropped.shape}.'
    )
  full = np.zeros((*shape, *cropped.shape[3:]), cropped.dtype)
  full[_slices(box)] = cropped
  return full


def _predict_normalised(
  predictor: Callable[[np.ndarray], Any],
  image: np.ndarray,
  options: options_lib.InferenceOptions,
) -> np.ndarray:
  probabilities = sliding_window.sliding_window_inference(
    predictor, image, **options.sliding_window_kwargs()
  )
  if probabilities.shape[-1] != records.NUM_REGIONS:
    raise ValueError(
      f'predictor must return {records.NUM_REGIONS} channels (TC, WT, ET). '
      f'Found {probabilities.shape[-1]}.'
    )
  return probabilities


# BraTS cases are resampled to 1 mm isotropic voxels; a case whose voxels
# differ by more than this fraction on some axis is segmented with a warning.
SPACING_TOLERANCE = 0.25


def _warn_if_not_brats_voxels(
  case: reader.Case, spacing: Sequence[float]
) -> None:
  if all(abs(s - 1.0) <= SPACING_TOLERANCE for s in spacing):
    return
  logging.warning(
    'Case %s has voxels of %s mm (%s); BraTS models are trained on 1 mm '
    'isotropic voxels, so segmentation quality may drop. The case is '
    'segmented on its own grid, not resampled: resample it to 1 mm first '
    '(e.g. with ANTs, FSL flirt -applyisoxfm 1 or SimpleITK) for the best '
    'result.',
    case.case_id,
    ' × '.join(f'{s:g}' for s in spacing),
    case.image_paths[0],
  )


def _output_layout(name: str | None, default: layouts.Layout) -> layouts.Layout:
  return default if name is None else layouts.get_layout(name)


def _slices(box: Box) -> tuple[slice, ...]:
  return tuple(slice(start, stop) for start, stop in box)


def _check_matches_record(
  case: Mapping[str, Any], record: manifest_lib.CaseRecord
) -> None:
  if 'case_id' in case:
    stored = case['case_id']
    stored = stored.numpy() if isinstance(stored, tf.Tensor) else stored
    stored = stored.decode() if isinstance(stored, bytes) else str(stored)
    if stored != record.case_id:
      raise ValueError(
        f'case must be the record of case_record {record.case_id!r}. Found '
        f'case {stored!r}.'
      )
  shape = tuple(int(n) for n in case['image'].shape)
  expected = (*record.cropped_shape, records.NUM_MODALITIES)
  if shape != expected:
    raise ValueError(
      f'case image must have the cropped shape of case_record '
      f'{record.case_id!r}, {expected}. Found {shape}.'
    )
