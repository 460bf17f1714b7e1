"""The files of prediction: input cases in, NIfTI label maps out.

* `resolve_cases`: the cases of one input form (a case folder, a folder of
  cases, or the four modality files of one case).
* `output_path` and `planned_outputs`: where each case's segmentation goes,
  `<output_dir>/<case_id>.nii.gz` (the BraTS submission name), checked
  before any work so an existing output stops a run before it starts.
* `write_segmentation`: a label map with the affine and header of a
  reference image, published atomically (`tff_brats.utils.atomic`).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import os
from typing import Any

import nibabel as nib
from nibabel import filebasedimages
import numpy as np

from tff_brats.data import errors
from tff_brats.data import layouts
from tff_brats.data import reader
from tff_brats.utils import atomic

OUTPUT_EXTENSION = '.nii.gz'


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
  output folder and renamed into place (`atomic.staged_file`), so
  `out_path` never holds a partial file.

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
  if not any(out_path.endswith(e) for e in layouts.NIFTI_EXTENSIONS):
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
  with atomic.staged_file(out_path, replace=overwrite) as tmp:
    nib.save(image, tmp)
  return out_path


def output_path(output_dir: str, case_id: str) -> str:
  """`<output_dir>/<case_id>.nii.gz`, the BraTS submission name."""
  return os.path.join(os.path.abspath(output_dir), case_id + OUTPUT_EXTENSION)


def planned_outputs(
  cases: Sequence[reader.Case], output_dir: str, overwrite: bool
) -> list[str]:
  """The output path of every case, each checked to be writable.

  Args:
    cases: The cases.
    output_dir: A folder, or a path where one may be created.
    overwrite: Whether existing outputs may be replaced.

  Returns:
    `output_path(output_dir, case.case_id)` per case, in case order.

  Raises:
    ValueError: `output_dir` is a file, or an output path is a folder.
    FileExistsError: An output exists and `overwrite` is False.
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(
      f'output_dir must be a folder. Found a file {os.path.abspath(output_dir)!r}.'
    )
  paths = [output_path(output_dir, case.case_id) for case in cases]
  for path in paths:
    _check_can_write(path, overwrite)
  return paths


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


def _check_can_write(path: str, overwrite: bool) -> None:
  if os.path.isdir(path):
    raise ValueError(f'out_path must be a file path. Found a folder {path!r}.')
  if os.path.lexists(path) and not overwrite:
    raise FileExistsError(
      f'output must not exist unless overwrite=True (--overwrite). Found an '
      f'existing file {path!r}.'
    )


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
