"""Segments BraTS cases with a trained network.

The path of a case through inference is the path of a training case through
`prepare` and `pipeline`, by the same code:

1. `reader.load_case(require_label=False)`: the four modalities, with every
   check of the reader (readable, complete NIfTI, 3-D, finite, one voxel
   grid). A segmentation next to the images is not read: prediction does
   not need it.
2. Crop to `prepare.brain_bounding_box` (with the preparation's
   `crop_margin`, 0 by default), the crop the stored training cases have.
3. `pipeline.normalize_intensity`: per-modality z-score over the brain.
4. `sliding_window.sliding_window_inference` with the network.
5. Threshold the (TC, WT, ET) probabilities and convert them to labels of
   the case's convention (or `output_layout`): 0/1/2/4 for BraTS 2018-2021,
   0/1/2/3 for 2023+.
6. Paste the crop back into a zero volume of the original shape and write
   it with the first modality's affine and header (`write_segmentation`).

Networks come as `Predictor`s: a function from a float32 batch of
normalised windows `[B, d, h, w, 4]` to probabilities `[B, d, h, w, 3]`,
built from a Keras model, a `tff_brats.models.model_io` folder or a
SavedModel exported by `tff_brats.inference.export` (`load_predictor`
accepts either folder).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import contextlib
import dataclasses
import os
from typing import Any
import uuid

import nibabel as nib
from nibabel import filebasedimages
import numpy as np
import tensorflow as tf
import tqdm

from tff_brats.data import errors
from tff_brats.data import layouts
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import pipeline
from tff_brats.data import prepare
from tff_brats.data import reader
from tff_brats.data import records
from tff_brats.inference import export
from tff_brats.inference import sliding_window
from tff_brats.utils import checks

# A common training crop, a multiple of SegResNet's 8; pass the crop size
# the model was trained with.
DEFAULT_WINDOW = (128, 128, 128)
MODEL_IO_CONFIG = 'config.json'
OUTPUT_EXTENSION = '.nii.gz'

Box = tuple[tuple[int, int], ...]


class Predictor:
  """A network as a function of normalised windows.

  Calling it maps a float32 batch `[B, d, h, w, 4]`, normalised as by
  `pipeline.normalize_intensity`, to float32 `[B, d, h, w, 3]` (TC, WT, ET)
  probabilities (a numpy array).

  Attributes:
    source: What the network was built from ('keras', 'model_io',
      'saved_model' or 'function').
    path: The folder it was loaded from, or None.
    size_multiple: Every window size must be a multiple of this (1 when
      unknown).
  """

  def __init__(
    self,
    predict_fn: Callable[[np.ndarray], Any],
    *,
    source: str = 'function',
    path: str | None = None,
    size_multiple: int = 1,
    owner: Any = None,
  ):
    """Wraps `predict_fn`.

    Args:
      predict_fn: Batch of windows to probabilities (numpy or tensor).
      source: See the class attributes.
      path: See the class attributes.
      size_multiple: See the class attributes.
      owner: An object to keep alive as long as the predictor (a loaded
        SavedModel owns the variables its signature functions read).
    """
    checks.check_positive_int('size_multiple', size_multiple)
    self._predict_fn = predict_fn
    self._owner = owner
    self.source = source
    self.path = path
    self.size_multiple = int(size_multiple)

  def __call__(self, batch: np.ndarray) -> np.ndarray:
    output = self._predict_fn(np.asarray(batch, np.float32))
    return np.asarray(output, np.float32)

  def __repr__(self) -> str:
    where = f', path={self.path!r}' if self.path else ''
    return f'Predictor(source={self.source!r}{where})'


def from_keras_model(
  model: tf.keras.Model, *, size_multiple: int | None = None
) -> Predictor:
  """A predictor calling `model(x, training=False)` in a `tf.function`.

  Args:
    model: Maps `[B, d, h, w, 4]` to `[B, d, h, w, 3]` probabilities.
    size_multiple: Default `model.size_multiple` if it has one, else 1.
  """
  if size_multiple is None:
    size_multiple = getattr(model, 'size_multiple', 1)

  @tf.function(reduce_retracing=True)
  def predict(batch):
    return tf.cast(model(batch, training=False), tf.float32)

  return Predictor(
    lambda batch: predict(tf.constant(batch)).numpy(),
    source='keras',
    size_multiple=size_multiple,
  )


def from_model_dir(path: str) -> Predictor:
  """A predictor from a `tff_brats.models.model_io` folder."""
  path = os.path.abspath(os.fspath(path))
  predictor = from_keras_model(export.load_model_dir(path))
  predictor.source, predictor.path = 'model_io', path
  return predictor


def from_saved_model(path: str) -> Predictor:
  """A predictor from a SavedModel's `serving_default` signature.

  A SavedModel written by `tff_brats.inference.export` has an input `image`
  and an output `probabilities`; any other SavedModel whose serving
  signature has exactly one input and one output works too.

  Args:
    path: The SavedModel folder.

  Raises:
    ValueError: `path` is not a SavedModel or has no usable signature.
  """
  path = os.path.abspath(os.fspath(path))
  if not export.is_exported_saved_model(path):
    raise ValueError(
      f'model must be a SavedModel folder (with {export.SAVED_MODEL_FILE}). '
      f'Found {path!r}.'
    )
  metadata = export.read_metadata(path) or {}
  try:
    loaded = tf.saved_model.load(path)
  except Exception as e:  # Any failure here means "not a loadable model".
    raise ValueError(
      f'model must be a loadable SavedModel. Found {path!r}: '
      f'{str(e).splitlines()[0] if str(e) else type(e).__name__}'
    ) from e
  signatures = dict(loaded.signatures)
  if export.SERVING_SIGNATURE not in signatures:
    raise ValueError(
      f'model must have a {export.SERVING_SIGNATURE!r} signature. Found '
      f'{sorted(signatures)} in {path!r}.'
    )
  function = signatures[export.SERVING_SIGNATURE]
  input_name = _only_or(
    function.structured_input_signature[1], export.INPUT_NAME, 'input', path
  )
  output_name = _only_or(
    function.structured_outputs, export.OUTPUT_NAME, 'output', path
  )

  def predict(batch):
    outputs = function(**{input_name: tf.constant(batch, tf.float32)})
    return outputs[output_name].numpy()

  return Predictor(
    predict,
    source='saved_model',
    path=path,
    size_multiple=int(metadata.get('size_multiple', 1)),
    owner=loaded,
  )


def model_kind(path: str) -> str:
  """'saved_model' or 'model_io', by the files in the folder `path`.

  Raises:
    ValueError: `path` does not exist or is neither kind of folder.
  """
  path = os.path.abspath(os.fspath(path))
  expected = (
    f'an exported SavedModel folder (with {export.SAVED_MODEL_FILE}) or a '
    f'model_io folder (with {MODEL_IO_CONFIG})'
  )
  if not os.path.exists(path):
    raise ValueError(
      f'model must be {expected}. Found {path!r}, which does not exist.'
    )
  if not os.path.isdir(path):
    raise ValueError(f'model must be {expected}. Found a file {path!r}.')
  if export.is_exported_saved_model(path):
    return 'saved_model'
  if os.path.isfile(os.path.join(path, MODEL_IO_CONFIG)):
    return 'model_io'
  found = sorted(os.listdir(path))
  shown = ', '.join(found[:5]) + (', ...' if len(found) > 5 else '')
  raise ValueError(
    f'model must be {expected}. Found {path!r} holding {shown or "nothing"}.'
  )


def load_predictor(path: str) -> Predictor:
  """A predictor from an exported SavedModel or a `model_io` folder.

  Raises:
    ValueError: See `model_kind`, `from_saved_model`.
  """
  if model_kind(path) == 'saved_model':
    return from_saved_model(path)
  return from_model_dir(path)


@dataclasses.dataclass
class CasePrediction:
  """The segmentation of one case, in its original voxel grid.

  Attributes:
    case_id: The case id.
    labels: uint8 `[D, H, W]`, labels of `layout`; 0 outside `crop_box`.
    layout: The label convention of `labels`.
    crop_box: The brain bounding box the network ran on.
    probabilities: float32 `[D, H, W, 3]` (TC, WT, ET), 0 outside the crop
      box, or None unless asked for.
  """

  case_id: str
  labels: np.ndarray
  layout: layouts.Layout
  crop_box: Box
  probabilities: np.ndarray | None = None


def predict_case(
  predictor: Callable[[np.ndarray], Any],
  case: reader.Case,
  *,
  window: int | Sequence[int] = DEFAULT_WINDOW,
  overlap: float = sliding_window.DEFAULT_OVERLAP,
  blending: str = 'gaussian',
  sigma_scale: float = sliding_window.DEFAULT_SIGMA_SCALE,
  threshold: float = sliding_window.DEFAULT_THRESHOLD,
  batch_size: int = 1,
  output_layout: str | None = None,
  crop_margin: int = 0,
  return_probabilities: bool = False,
) -> CasePrediction:
  """Segments one case from its NIfTI files (see the module doc's steps).

  Args:
    predictor: A `Predictor` (or any function of normalised window batches).
    case: The case (from `reader.discover_cases`, `case_from_directory` or
      `case_from_files`).
    window: Sliding-window size `(d, h, w)` or one int; a multiple of the
      predictor's `size_multiple`.
    overlap: See `sliding_window.sliding_window_inference`.
    blending: 'gaussian' or 'constant'.
    sigma_scale: The Gaussian's sigma as a fraction of the window.
    threshold: Probability at or above which a voxel is in a region.
    batch_size: Windows per network call.
    output_layout: 'brats2018' or 'brats2023' to write labels of that
      convention; None uses the case's own.
    crop_margin: The `crop_margin` the training data were prepared with.
    return_probabilities: Whether to return the probabilities too.

  Returns:
    The `CasePrediction`.

  Raises:
    BratsDataError: Bad input files (see `reader.load_case`) or a case
      whose four modalities are all zero.
    ValueError: Bad arguments.
  """
  options = _check_options(
    predictor,
    window=window,
    overlap=overlap,
    blending=blending,
    sigma_scale=sigma_scale,
    threshold=threshold,
    batch_size=batch_size,
  )
  layout = _output_layout(output_layout, case.layout)
  checks.check_non_negative_int('crop_margin', crop_margin)
  loaded = reader.load_case(
    dataclasses.replace(case, label_path=None), require_label=False
  )
  try:
    box = prepare.brain_bounding_box(loaded.image, margin=crop_margin)
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
    probabilities, layout, threshold=threshold
  )
  return CasePrediction(
    case_id=case.case_id,
    labels=paste_crop(labels, box, loaded.shape),
    layout=layout,
    crop_box=box,
    probabilities=(
      paste_crop(probabilities, box, loaded.shape)
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
  *,
  normalized: bool = False,
  window: int | Sequence[int] = DEFAULT_WINDOW,
  overlap: float = sliding_window.DEFAULT_OVERLAP,
  blending: str = 'gaussian',
  sigma_scale: float = sliding_window.DEFAULT_SIGMA_SCALE,
  threshold: float = sliding_window.DEFAULT_THRESHOLD,
  batch_size: int = 1,
  output_layout: str | None = None,
) -> PreparedCasePrediction:
  """Segments a case stored in prepared shards (for evaluation).

  The stored image is already the brain crop; it is normalised (unless
  `normalized`) and run through the sliding window exactly as
  `predict_case` does, and the result is also pasted into the original
  voxel grid with `case_record.crop_box` and `shape`, where scoring against
  the original segmentation happens.

  Args:
    predictor: A `Predictor` (or any function of normalised window batches).
    case: A serialised record (bytes or a scalar `tf.string` tensor), or a
      parsed one: a mapping with `image` (`[d, h, w, 4]`) and optionally
      `case_id`, from `records.parse_case` (raw intensities) or
      `pipeline.make_evaluation_dataset` (normalised: pass
      `normalized=True`).
    case_record: The case's manifest entry.
    normalized: Whether a parsed `image` is already normalised.
    window: See `predict_case`.
    overlap: See `predict_case`.
    blending: See `predict_case`.
    sigma_scale: See `predict_case`.
    threshold: See `predict_case`.
    batch_size: See `predict_case`.
    output_layout: Label convention of `labels`; None uses
      `case_record.layout`.

  Returns:
    The `PreparedCasePrediction`.

  Raises:
    ValueError: Bad arguments, or a record that does not match
      `case_record` (case id or cropped shape).
  """
  options = _check_options(
    predictor,
    window=window,
    overlap=overlap,
    blending=blending,
    sigma_scale=sigma_scale,
    threshold=threshold,
    batch_size=batch_size,
  )
  layout = _output_layout(output_layout, layouts.get_layout(case_record.layout))
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
  regions = sliding_window.threshold(probabilities, threshold)
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


def write_segmentation(
  labels: np.ndarray,
  reference_nifti_path: str,
  out_path: str,
  *,
  overwrite: bool = False,
) -> str:
  """Writes a label map with the affine and header of a reference NIfTI.

  The image keeps the reference's header (NIfTI-1 or -2, qform and sform
  matrices and codes, units, description) with data type uint8, no
  scaling and no display range. It is written to a temporary file in the
  output folder and renamed into place, so `out_path` never holds a partial
  file.

  Args:
    labels: Integer `[D, H, W]` label map with values in [0, 255], of the
      reference's shape.
    reference_nifti_path: The image whose grid the labels are on (e.g. the
      case's first modality).
    out_path: Where to write; must end in '.nii.gz' or '.nii'.
    overwrite: Whether an existing `out_path` may be replaced.

  Returns:
    The absolute `out_path`.

  Raises:
    FileExistsError: `out_path` exists and `overwrite` is False.
    ValueError: Bad labels (shape, dtype, values) or `out_path`.
    BratsDataError: The reference cannot be read.
  """
  out_path = os.path.abspath(os.fspath(out_path))
  extension = next(
    (e for e in layouts.NIFTI_EXTENSIONS if out_path.endswith(e)), None
  )
  if extension is None:
    raise ValueError(
      f"out_path must end in '.nii.gz' or '.nii'. Found {out_path!r}."
    )
  _check_can_write(out_path, overwrite)
  try:
    reference = nib.load(os.fspath(reference_nifti_path))
  except (OSError, filebasedimages.ImageFileError) as e:
    raise errors.BratsDataError(
      f'reference image must be a readable NIfTI file. Found {e}',
      path=reference_nifti_path,
    ) from e
  labels = _checked_labels(labels, reference.shape, reference_nifti_path)
  header = reference.header.copy()
  # No affine argument: the header's qform and sform are kept as they are.
  image = type(reference)(labels, None, header=header)
  image.set_data_dtype(np.uint8)
  image.header['scl_slope'] = 1.0
  image.header['scl_inter'] = 0.0
  image.header['cal_min'] = 0.0
  image.header['cal_max'] = 0.0
  folder, name = os.path.split(out_path)
  stem = name[: -len(extension)]
  tmp = os.path.join(folder, f'.{stem}.tmp-{uuid.uuid4().hex[:8]}{extension}')
  try:
    nib.save(image, tmp)
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    _check_can_write(out_path, overwrite)
    os.replace(tmp, out_path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  return out_path


def output_path(output_dir: str, case_id: str) -> str:
  """`<output_dir>/<case_id>.nii.gz`, the BraTS submission name."""
  return os.path.join(os.path.abspath(output_dir), case_id + OUTPUT_EXTENSION)


def resolve_cases(
  *,
  case_dir: str | None = None,
  image_paths: Mapping[str, str] | None = None,
  case_id: str | None = None,
  data_dir: str | None = None,
) -> list[reader.Case]:
  """The cases of exactly one input form.

  Args:
    case_dir: One BraTS case folder.
    image_paths: The four modality files, keyed by the modality names of
      one layout (t1, t1ce, t2, flair or t1n, t1c, t2w, t2f).
    case_id: The case id of `image_paths` (default: from the file names).
    data_dir: A folder of case folders (`reader.discover_cases`).

  Returns:
    The cases (one, or all under `data_dir` sorted by id); no label needed.

  Raises:
    ValueError: No form or several forms given, an incomplete or mixed
      `image_paths`, `case_id` without `image_paths`.
    BratsDataError: Missing files, no case found (see `reader`).
  """
  image_paths = dict(image_paths or {})
  given = [
    name
    for name, value in (
      ('case_dir', case_dir),
      ('image_paths', image_paths),
      ('data_dir', data_dir),
    )
    if value
  ]
  if len(given) != 1:
    raise ValueError(
      'exactly one input form must be given: case_dir, image_paths (the '
      'four modality files) or data_dir. Found '
      f'{" and ".join(given) if given else "none"}.'
    )
  if case_id is not None and not image_paths:
    raise ValueError(
      f'case_id must only be given with image_paths (case folders are named '
      f'after their case). Found case_id={case_id!r} with {given[0]}.'
    )
  if case_dir:
    return [reader.case_from_directory(case_dir, require_label=False)]
  if data_dir:
    return reader.discover_cases(data_dir, require_label=False)
  layout = _layout_of_modalities(image_paths)
  return [
    reader.case_from_files(image_paths, case_id=case_id, layout=layout.name)
  ]


def segment_cases(
  predictor: Callable[[np.ndarray], Any],
  cases: Sequence[reader.Case],
  output_dir: str,
  *,
  overwrite: bool = False,
  progress: bool = True,
  **predict_kwargs: Any,
) -> list[str]:
  """Segments cases and writes `<output_dir>/<case_id>.nii.gz` for each.

  Every output is checked before the first case is read, so an existing
  output stops the run before any work (unless `overwrite`). A bad case
  stops the run with its error; the outputs of the cases before it stay
  (each complete) and the bad case writes nothing.

  Args:
    predictor: A `Predictor`.
    cases: The cases.
    output_dir: Created if missing.
    overwrite: Whether existing outputs may be replaced.
    progress: Whether to show a progress bar over cases (stderr).
    **predict_kwargs: Keyword arguments of `predict_case`.

  Returns:
    The written paths, in case order.
  """
  check_predict_options(predictor, **predict_kwargs)
  paths = _planned_outputs(cases, output_dir, overwrite)
  os.makedirs(output_dir, exist_ok=True)
  written = []
  with tqdm.tqdm(
    total=len(cases), desc='segmenting cases', unit='case', disable=not progress
  ) as bar:
    for case, path in zip(cases, paths, strict=True):
      bar.set_postfix_str(case.case_id)
      prediction = predict_case(predictor, case, **predict_kwargs)
      written.append(
        write_segmentation(
          prediction.labels, case.image_paths[0], path, overwrite=overwrite
        )
      )
      bar.update()
  return written


def run_prediction(
  *,
  model: str,
  output_dir: str,
  case_dir: str | None = None,
  image_paths: Mapping[str, str] | None = None,
  case_id: str | None = None,
  data_dir: str | None = None,
  overwrite: bool = False,
  progress: bool = True,
  **predict_kwargs: Any,
) -> list[str]:
  """Segments the cases of one input form with the model at `model`.

  Cheap checks come first (input form, case files, model folder, existing
  outputs, options); the model is loaded only when they pass.

  Args:
    model: An exported SavedModel folder or a `model_io` folder.
    output_dir: Where `<case_id>.nii.gz` files go.
    case_dir: See `resolve_cases`.
    image_paths: See `resolve_cases`.
    case_id: See `resolve_cases`.
    data_dir: See `resolve_cases`.
    overwrite: Whether existing outputs may be replaced.
    progress: Whether to show a progress bar.
    **predict_kwargs: Keyword arguments of `predict_case`.

  Returns:
    The written paths.
  """
  cases = resolve_cases(
    case_dir=case_dir,
    image_paths=image_paths,
    case_id=case_id,
    data_dir=data_dir,
  )
  model_kind(model)
  _planned_outputs(cases, output_dir, overwrite)
  check_predict_options(**predict_kwargs)
  predictor = load_predictor(model)
  return segment_cases(
    predictor,
    cases,
    output_dir,
    overwrite=overwrite,
    progress=progress,
    **predict_kwargs,
  )


def check_predict_options(
  predictor: Any = None,
  *,
  window: Any = DEFAULT_WINDOW,
  overlap: Any = sliding_window.DEFAULT_OVERLAP,
  blending: Any = 'gaussian',
  sigma_scale: Any = sliding_window.DEFAULT_SIGMA_SCALE,
  threshold: Any = sliding_window.DEFAULT_THRESHOLD,
  batch_size: Any = 1,
  output_layout: Any = None,
  crop_margin: Any = 0,
  return_probabilities: Any = False,
) -> None:
  """Checks the keyword arguments of `predict_case` without running it."""
  del return_probabilities  # any truth value
  _check_options(
    predictor,
    window=window,
    overlap=overlap,
    blending=blending,
    sigma_scale=sigma_scale,
    threshold=threshold,
    batch_size=batch_size,
  )
  if output_layout is not None:
    layouts.get_layout(output_layout)
  checks.check_non_negative_int('crop_margin', crop_margin)


def _check_options(
  predictor: Any,
  *,
  window: Any,
  overlap: Any,
  blending: Any,
  sigma_scale: Any,
  threshold: Any,
  batch_size: Any,
) -> dict[str, Any]:
  window = sliding_window.check_options(
    window=window,
    overlap=overlap,
    blending=blending,
    sigma_scale=sigma_scale,
    batch_size=batch_size,
  )
  sliding_window.check_threshold(threshold)
  multiple = getattr(predictor, 'size_multiple', 1)
  if any(w % multiple for w in window):
    raise ValueError(
      f'window must be a multiple of {multiple} along every axis for this '
      f'model. Found {window}.'
    )
  return dict(
    window=window,
    overlap=overlap,
    blending=blending,
    sigma_scale=sigma_scale,
    batch_size=batch_size,
  )


def _predict_normalised(
  predictor: Callable[[np.ndarray], Any],
  image: np.ndarray,
  options: dict[str, Any],
) -> np.ndarray:
  probabilities = sliding_window.sliding_window_inference(
    predictor, image, **options
  )
  if probabilities.shape[-1] != records.NUM_REGIONS:
    raise ValueError(
      f'predictor must return {records.NUM_REGIONS} channels (TC, WT, ET). '
      f'Found {probabilities.shape[-1]}.'
    )
  return probabilities


def _only_or(
  specs: Mapping[str, Any], preferred: str, what: str, path: str
) -> str:
  """The name `preferred` if the signature has it, else its only name."""
  if preferred in specs:
    return preferred
  if len(specs) == 1:
    return next(iter(specs))
  raise ValueError(
    f'model signature {export.SERVING_SIGNATURE!r} must have an {what} '
    f'named {preferred!r} or exactly one {what}. Found {sorted(specs)} in '
    f'{path!r}.'
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


def _check_can_write(path: str, overwrite: bool) -> None:
  if os.path.isdir(path):
    raise ValueError(f'out_path must be a file path. Found a folder {path!r}.')
  if os.path.lexists(path) and not overwrite:
    raise FileExistsError(
      f'output must not exist unless overwrite=True (--overwrite). Found an '
      f'existing file {path!r}.'
    )


def _planned_outputs(
  cases: Sequence[reader.Case], output_dir: str, overwrite: bool
) -> list[str]:
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(
      f'output_dir must be a folder. Found a file {os.path.abspath(output_dir)!r}.'
    )
  paths = [output_path(output_dir, case.case_id) for case in cases]
  for path in paths:
    _check_can_write(path, overwrite)
  return paths


def _checked_labels(
  labels: Any, reference_shape: tuple[int, ...], reference: str
) -> np.ndarray:
  labels = np.asarray(labels)
  spatial = tuple(reference_shape[:3])
  if any(n != 1 for n in reference_shape[3:]) or labels.shape != spatial:
    raise ValueError(
      f'labels must have the shape of the reference image {reference!r}, '
      f'{spatial}. Found {labels.shape}.'
    )
  if labels.dtype.kind not in 'biu':
    raise ValueError(f'labels must be integers. Found dtype {labels.dtype}.')
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError(
      f'labels must be in [0, 255] (uint8). Found values from '
      f'{labels.min()} to {labels.max()}.'
    )
  return labels.astype(np.uint8)


def _layout_of_modalities(image_paths: Mapping[str, str]) -> layouts.Layout:
  keys = set(image_paths)
  for layout in layouts.LAYOUTS.values():
    if keys <= set(layout.modalities):
      missing = [m for m in layout.modalities if m not in keys]
      if missing:
        raise ValueError(
          f'image_paths must name all four modalities '
          f'{list(layout.modalities)} ({layout.description}). Found '
          f'{sorted(keys)}; missing {missing}.'
        )
      return layout
  names = {
    key: next(
      (n for n, lay in layouts.LAYOUTS.items() if key in lay.modalities),
      'unknown',
    )
    for key in sorted(keys)
  }
  raise ValueError(
    'image_paths must use the modality names of one layout: '
    + ' or '.join(str(list(lay.modalities)) for lay in layouts.LAYOUTS.values())
    + f'. Found {", ".join(f"{k} ({v})" for k, v in names.items())}.'
  )
