"""Reads BraTS cases from disk and validates them.

Plain numpy + nibabel; no TensorFlow. Two steps:

* Discovery (`discover_cases`, `case_from_directory`, `case_from_files`)
  finds the four MR sequences and the segmentation of each case by their
  file names (see `layouts`) and returns `Case` records; it reads no voxels.
* Loading (`load_case`) reads one case into numpy arrays and checks it: the
  files are readable NIfTI images, the volumes are 3-D, finite and on the
  same voxel grid, and the labels follow the layout's convention. A label
  outside the convention is an error, never mapped silently.

Scans written by other tools (dcm2niix, ITK, FSL, FreeSurfer, 3D Slicer,
MONAI, nibabel scripts) load as follows:

* Intensity scaling (`scl_slope`, `scl_inter`) is applied; any integer or
  float data type is read, and labels stored as whole-number floats are
  accepted. NaN or Inf voxels are an error naming the first one.
* The voxel-to-world matrix is the sform when its code is set, else the
  qform (nibabel's and the NIfTI standard's order). A file whose qform and
  sform are both set but point its axes in different directions is an
  error: which one the scanner meant cannot be told. A file with neither
  code set has no known orientation; its voxels are used as stored, with a
  warning.
* Every case is returned in the orientation of the BraTS files,
  `TRAINING_AXCODES` = ('L', 'P', 'S') in nibabel's axis codes, by
  permuting and flipping axes only (`nibabel.orientations`; an oblique
  scan goes to its closest such orientation, never resampled). BraTS data
  are already in it, so they are unchanged; an RAS or LPS-transposed scan
  reaches the model the way its training data did.
  `LoadedCase.to_source_grid` maps an array back to the files' own grid,
  where predictions are written.
* All files of a case must be on one grid (shape and affine); a modality
  in another grid or orientation is an error, never resampled.

Every problem raises `errors.BratsDataError` naming the case, the file and
the offending value.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import gzip
import hashlib
import os
from typing import NamedTuple
import zlib

from absl import logging
import nibabel as nib
from nibabel import filebasedimages
from nibabel import orientations
from nibabel import spatialimages
from nibabel import wrapstruct
import numpy as np

from tff_brats.data import errors
from tff_brats.data import layouts
from tff_brats.utils import checks

# Folders of BraTS 2018/2019 that group cases by tumour grade.
GRADES = ('HGG', 'LGG')

# Discovery looks at `data_dir` and sub-folders down to this depth.
MAX_SEARCH_DEPTH = 2

# The orientation of the BraTS files (nibabel's axis codes of their affine,
# `synthetic.nifti_affine`): every loaded case is put in it.
TRAINING_AXCODES = ('L', 'P', 'S')

_CHUNK_BYTES = 1 << 20
_GZIP_MAGIC = b'\x1f\x8b'
_HEADER_SIZES = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
_MAX_EXAMPLES = 3

PathLike = str | os.PathLike[str]


@dataclasses.dataclass(frozen=True)
class Case:
  """Where the files of one BraTS case are.

  Attributes:
    case_id: The case id, e.g. 'Brats18_CBICA_AAB_1'.
    layout: The naming and label convention the case follows.
    image_paths: Absolute paths of the four MR sequences, in
      `layout.modalities` order.
    label_path: Absolute path of the segmentation, or None when the case has
      none.
    grade: 'HGG' or 'LGG' when the case lies under such a folder (BraTS
      2018/2019), else None.
  """

  case_id: str
  layout: layouts.Layout
  image_paths: tuple[str, str, str, str]
  label_path: str | None
  grade: str | None


@dataclasses.dataclass
class LoadedCase:
  """The validated voxels of one case.

  Attributes:
    case: Where the case was read from.
    image: float32 `[D, H, W, 4]`, raw intensities in `layout.modalities`
      order.
    labels: uint8 `[D, H, W]`, the original label map, or None.
    regions: bool `[D, H, W, 3]` (TC, WT, ET) regions, or None.
    affine: float64 `[4, 4]` voxel-to-world affine of the arrays above: the
      first modality's, with the reorientation folded in.
    spacing: Voxel size in mm along the arrays' axes (the first modality's
      header zooms, in the reoriented axis order).
    shape: `(D, H, W)` of the arrays above.
    source_axcodes: The files' own orientation (nibabel axis codes), or
      None when their header sets neither qform nor sform (then the arrays
      are as stored).
    source_shape: `(D, H, W)` of the files' own grid.
  """

  case: Case
  image: np.ndarray
  labels: np.ndarray | None
  regions: np.ndarray | None
  affine: np.ndarray
  spacing: tuple[float, float, float]
  shape: tuple[int, int, int]
  source_axcodes: tuple[str, str, str] | None = None
  source_shape: tuple[int, int, int] | None = None

  def __post_init__(self):
    if self.source_shape is None:
      self.source_shape = self.shape

  @property
  def reoriented(self) -> bool:
    """Whether the arrays' axes differ from the files' own."""
    return self.source_axcodes is not None and (
      self.source_axcodes != TRAINING_AXCODES
    )

  def to_source_grid(self, array: np.ndarray) -> np.ndarray:
    """Maps `[D, H, W, ...]` on the loaded grid back to the files' grid.

    Args:
      array: An array whose first three axes are `shape` (labels,
        probabilities, regions); trailing axes are kept.

    Returns:
      The array on the files' own grid (`source_shape`), where it lines up
      with their affine and header.
    """
    array = np.asarray(array)
    if tuple(array.shape[:3]) != self.shape:
      raise ValueError(
        f'array must have the loaded grid {self.shape} in its first three '
        f'axes. Found shape {array.shape}.'
      )
    if not self.reoriented:
      return array
    back = orientations.ornt_transform(
      orientations.axcodes2ornt(TRAINING_AXCODES),
      orientations.axcodes2ornt(self.source_axcodes),
    )
    return np.ascontiguousarray(orientations.apply_orientation(array, back))


def discover_cases(
  data_dir: PathLike,
  *,
  layout: str | None = None,
  require_label: bool = True,
) -> list[Case]:
  """Finds every BraTS case folder under `data_dir`.

  A directory is a case folder when it holds at least one file named
  `<dirname><separator><suffix><ext>` of a layout (e.g.
  `Brats18_X/Brats18_X_t1.nii.gz`); it must then hold all four modalities
  and, when `require_label`, the segmentation. `data_dir` itself and the
  directories one and two levels below it are searched, which covers BraTS
  2018's `HGG/` and `LGG/` folders and any other grouping folder; folders
  whose names start with '.' are skipped. When `layout` is given, a case
  folder named in the other layout is an error, not skipped: a silently
  dropped case would change the data set.

  Args:
    data_dir: The folder to search.
    layout: 'brats2018' or 'brats2023' to require that layout, or None to
      detect it per case from the file names.
    require_label: Whether every case must have a segmentation.

  Returns:
    The cases, sorted by case id.

  Raises:
    BratsDataError: If `data_dir` is missing or unreadable, holds no case,
      holds two cases with the same id, or a case misses a file.
    ValueError: If `layout` is not a known layout name.
  """
  forced = _layout_or_none(layout)
  root = os.path.abspath(os.fspath(data_dir))
  _check_directory(root, 'data_dir')
  found: dict[str, str] = {}
  cases = []
  stray_files = []
  pending = [(root, 0)]
  while pending:
    directory, depth = pending.pop(0)
    files, subdirs = _list_directory(directory)
    case = _case_in_directory(directory, files, forced, require_label)
    if case is not None:
      if case.case_id in found:
        raise errors.BratsDataError(
          f'case id must be unique. Found it in both '
          f'{found[case.case_id]!r} and {directory!r}.',
          case_id=case.case_id,
        )
      found[case.case_id] = directory
      cases.append(case)
      continue
    stray_files.extend(
      os.path.join(directory, name) for name in files if _nifti_stem(name)
    )
    if depth < MAX_SEARCH_DEPTH:
      pending.extend((os.path.join(directory, d), depth + 1) for d in subdirs)
  if not cases:
    raise errors.BratsDataError(_no_case_message(root, forced, stray_files))
  return sorted(cases, key=lambda case: case.case_id)


def case_from_directory(
  path: PathLike,
  *,
  layout: str | None = None,
  require_label: bool = True,
) -> Case:
  """Reads the file names of one case folder.

  Args:
    path: The case folder; its name is the case id.
    layout: 'brats2018' or 'brats2023' to require that layout, or None to
      detect it from the file names.
    require_label: Whether the case must have a segmentation.

  Returns:
    The case.

  Raises:
    BratsDataError: If `path` is not a readable case folder or a file is
      missing.
    ValueError: If `layout` is not a known layout name.
  """
  forced = _layout_or_none(layout)
  directory = os.path.abspath(os.fspath(path))
  _check_directory(directory, 'path')
  files, _ = _list_directory(directory)
  case = _case_in_directory(directory, files, forced, require_label)
  if case is None:
    raise errors.BratsDataError(
      f'path {directory!r} must be a BraTS case folder: '
      f'{_expected_names(forced)}. Found no such file'
      f'{_examples_of(sorted(n for n in files if _nifti_stem(n)))}.',
      case_id=os.path.basename(directory),
    )
  return case


def case_from_files(
  image_paths: Sequence[PathLike] | Mapping[str, PathLike],
  label_path: PathLike | None = None,
  *,
  case_id: str | None = None,
  layout: str | None = None,
) -> Case:
  """Builds a case from explicit file paths.

  Args:
    image_paths: The four MR sequences, either in the layout's modality
      order or as a mapping from modality suffix (e.g. 't1ce' or 't2f') to
      path.
    label_path: The segmentation, or None.
    case_id: The case id; when None it is read from the file names, which
      must then follow the layout (`<case>_t1.nii.gz`, ...).
    layout: 'brats2018' or 'brats2023', or None to infer it from the mapping
      keys or the file names.

  Returns:
    The case.

  Raises:
    BratsDataError: If a file is missing, the files are out of modality
      order, or the layout or case id cannot be inferred.
    ValueError: If `layout` is not a known layout name.
  """
  forced = _layout_or_none(layout)
  if isinstance(image_paths, Mapping):
    chosen, paths = _order_mapping(image_paths, forced)
  else:
    if isinstance(image_paths, (str, bytes, os.PathLike)):
      raise errors.BratsDataError(
        f'image_paths must be 4 paths or a mapping from modality to path. '
        f'Found a single path {os.fsdecode(image_paths)!r}.'
      )
    paths = [os.path.abspath(os.fspath(p)) for p in image_paths]
    if len(paths) != len(layouts.BRATS2018.modalities):
      raise errors.BratsDataError(
        f'image_paths must hold 4 paths, one per modality. '
        f'Found {len(paths)}: {paths}.'
      )
    chosen = forced or _infer_layout(paths)
  label = None if label_path is None else os.path.abspath(os.fspath(label_path))
  _check_file_order(paths, label, chosen)
  if case_id is None:
    case_id = _infer_case_id(paths, label, chosen)
  for suffix, path in zip(chosen.modalities, paths, strict=True):
    _check_file_exists(path, f'modality {suffix!r}', case_id)
  if label is not None:
    _check_file_exists(label, 'segmentation', case_id)
  if len(set(paths)) != len(paths):
    raise errors.BratsDataError(
      f'image_paths must be 4 different files. Found {paths}.',
      case_id=case_id,
    )
  folder = os.path.dirname(paths[0])
  if os.path.basename(folder) == case_id:
    folder = os.path.dirname(folder)
  return Case(
    case_id=case_id,
    layout=chosen,
    image_paths=tuple(paths),
    label_path=label,
    grade=_grade_of(folder),
  )


def load_case(
  case: Case,
  *,
  require_label: bool = True,
  affine_atol: float = 1e-3,
) -> LoadedCase:
  """Reads and validates the voxels of one case.

  Args:
    case: The case to read.
    require_label: Whether the case must have a segmentation; when False a
      case without one loads with `labels` and `regions` None.
    affine_atol: Largest absolute difference allowed between the affine of
      the first modality and those of the other files.

  Returns:
    The loaded case; images float32, labels uint8.

  Raises:
    BratsDataError: If a file is unreadable, truncated or not NIfTI, a volume
      is not 3-D or not finite, the files' shapes or affines differ, or a
      label is outside the layout's convention.
    ValueError: If `affine_atol` is not a finite non-negative number.
  """
  checks.check_non_negative_number('affine_atol', affine_atol)
  if case.label_path is None and require_label:
    raise errors.BratsDataError(
      'segmentation must be present (require_label=True). Found a case '
      'without label_path.',
      case_id=case.case_id,
    )
  first = None
  image = None
  modalities = case.layout.modalities
  for channel, (suffix, path) in enumerate(
    zip(modalities, case.image_paths, strict=True)
  ):
    volume = _read_volume(path, f'modality {suffix!r}', case.case_id)
    if first is None:
      first = volume
      image = np.empty((*volume.data.shape, len(modalities)), np.float32)
    else:
      _check_same_grid(first, volume, f'modality {suffix!r}', affine_atol)
    image[..., channel] = _to_float32(volume, f'modality {suffix!r}')
  labels = regions = None
  if case.label_path is not None:
    volume = _read_volume(case.label_path, 'segmentation', case.case_id)
    _check_same_grid(first, volume, 'segmentation', affine_atol)
    labels = _checked_labels(volume, case.layout)
    regions = layouts.labels_to_regions(labels, case.layout)
  source_shape = tuple(int(n) for n in first.data.shape)
  affine, spacing = first.affine, first.spacing
  if first.axcodes is None:
    logging.warning(
      'Case %s: %s sets neither qform_code nor sform_code, so its '
      'orientation is unknown; its voxels are used as stored (the model '
      'expects the BraTS orientation %s).',
      case.case_id,
      first.path,
      ''.join(TRAINING_AXCODES),
    )
  elif first.axcodes != TRAINING_AXCODES:
    transform = orientations.ornt_transform(
      orientations.axcodes2ornt(first.axcodes),
      orientations.axcodes2ornt(TRAINING_AXCODES),
    )
    image = _reoriented(image, transform)
    if labels is not None:
      labels = _reoriented(labels, transform)
      regions = _reoriented(regions, transform)
    affine = first.affine @ orientations.inv_ornt_aff(transform, source_shape)
    reordered = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(transform):
      reordered[int(target)] = first.spacing[axis]
    spacing = tuple(reordered)
  return LoadedCase(
    case=case,
    image=image,
    labels=labels,
    regions=regions,
    affine=affine,
    spacing=spacing,
    shape=tuple(int(n) for n in image.shape[:3]),
    source_axcodes=first.axcodes,
    source_shape=source_shape,
  )


def _reoriented(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(orientations.apply_orientation(array, transform))


def file_sha256(path: PathLike) -> str:
  """Returns the SHA-256 hex digest of a file, read in 1 MiB chunks.

  Raises:
    BratsDataError: If the file cannot be read.
  """
  digest = hashlib.sha256()
  try:
    with open(path, 'rb') as f:
      while chunk := f.read(_CHUNK_BYTES):
        digest.update(chunk)
  except OSError as e:
    raise errors.BratsDataError(_os_error_message('file', e), path=path) from e
  return digest.hexdigest()


# Discovery helpers.


def _layout_or_none(name: str | None) -> layouts.Layout | None:
  return None if name is None else layouts.get_layout(name)


def _check_directory(path: str, what: str) -> None:
  if not os.path.exists(path):
    raise errors.BratsDataError(
      f'{what} must be an existing directory. Found {path!r}, which does not '
      f'exist.'
    )
  if not os.path.isdir(path):
    raise errors.BratsDataError(
      f'{what} must be a directory. Found {path!r}, which is not a directory.'
    )


def _list_directory(directory: str) -> tuple[list[str], list[str]]:
  """Returns the sorted names of the non-directories and the directories."""
  files, subdirs = [], []
  try:
    with os.scandir(directory) as entries:
      for entry in entries:
        if entry.is_dir():
          if not entry.name.startswith('.'):
            subdirs.append(entry.name)
        else:
          files.append(entry.name)
  except OSError as e:
    raise errors.BratsDataError(
      _os_error_message(f'directory {directory!r}', e)
    ) from e
  return sorted(files), sorted(subdirs)


def _case_in_directory(
  directory: str,
  files: list[str],
  forced: layouts.Layout | None,
  require_label: bool,
) -> Case | None:
  """Returns the case in `directory`, or None if it is not a case folder."""
  case_id = os.path.basename(directory)
  names = set(files)
  matches = {}
  for layout in layouts.LAYOUTS.values():
    found = {}
    for suffix in _suffixes(layout):
      hits = [
        layout.file_name(case_id, suffix, ext)
        for ext in layouts.NIFTI_EXTENSIONS
        if layout.file_name(case_id, suffix, ext) in names
      ]
      if hits:
        found[suffix] = hits
    if found:
      matches[layout.name] = (layout, found)
  if not matches:
    return None
  if len(matches) > 1:
    described = ' and '.join(
      f'the {layout.description} ({_first_name(found)!r})'
      for layout, found in matches.values()
    )
    raise errors.BratsDataError(
      f'the files of a case must follow one layout. Found names of both '
      f'{described} in {directory!r}.',
      case_id=case_id,
    )
  layout, found = next(iter(matches.values()))
  if forced is not None and layout is not forced:
    raise errors.BratsDataError(
      f'case folder must follow the {forced.description} '
      f'(layout={forced.name!r}). Found the {layout.description} '
      f'({_first_name(found)!r}) in {directory!r}.',
      case_id=case_id,
    )
  for suffix, hits in found.items():
    if len(hits) > 1:
      raise errors.BratsDataError(
        f'{_kind(suffix, layout)} {suffix!r} must have one file, .nii.gz or '
        f'.nii. Found {hits} in {directory!r}.',
        case_id=case_id,
      )
  ext = _common_extension(found)
  wanted = layout.modalities
  if require_label:
    wanted += (layout.label_suffix,)
  for suffix in wanted:
    if suffix not in found:
      expected = os.path.join(directory, layout.file_name(case_id, suffix, ext))
      raise errors.BratsDataError(
        f'{_kind(suffix, layout)} {suffix!r} must be present ({layout.description}; '
        f'.nii.gz or .nii). Found no such file.',
        case_id=case_id,
        path=expected,
      )
  label = found.get(layout.label_suffix)
  return Case(
    case_id=case_id,
    layout=layout,
    image_paths=tuple(
      os.path.join(directory, found[s][0]) for s in layout.modalities
    ),
    label_path=None if label is None else os.path.join(directory, label[0]),
    grade=_grade_of(os.path.dirname(directory)),
  )


def _suffixes(layout: layouts.Layout) -> tuple[str, ...]:
  return (*layout.modalities, layout.label_suffix)


def _kind(suffix: str, layout: layouts.Layout) -> str:
  return 'segmentation' if suffix == layout.label_suffix else 'modality'


def _grade_of(folder: str) -> str | None:
  name = os.path.basename(folder).upper()
  return name if name in GRADES else None


def _first_name(found: dict[str, list[str]]) -> str:
  return next(iter(found.values()))[0]


def _common_extension(found: dict[str, list[str]]) -> str:
  """The extension most found files use ('.nii.gz' on ties)."""
  counts = {ext: 0 for ext in layouts.NIFTI_EXTENSIONS}
  for hits in found.values():
    for name in hits:
      counts[_split_extension(name)[1]] += 1
  return max(layouts.NIFTI_EXTENSIONS, key=lambda ext: counts[ext])


def _split_extension(name: str) -> tuple[str, str]:
  for ext in layouts.NIFTI_EXTENSIONS:
    if name.endswith(ext):
      return name[: -len(ext)], ext
  return name, ''


def _nifti_stem(name: str) -> str:
  """The name without its NIfTI extension, or '' if it is not NIfTI."""
  stem, ext = _split_extension(name)
  return stem if ext else ''


def _expected_names(forced: layouts.Layout | None) -> str:
  candidates = [forced] if forced else list(layouts.LAYOUTS.values())
  patterns = [
    f"'<case>/<case>{layout.separator}"
    f'{{{",".join(_suffixes(layout))}}}'
    f".nii.gz' ({layout.description})"
    for layout in candidates
  ]
  return ' or '.join(patterns) + ', .nii also accepted'


def _examples_of(names: list[str]) -> str:
  if not names:
    return ''
  shown = ', '.join(repr(n) for n in names[:_MAX_EXAMPLES])
  more = ', ...' if len(names) > _MAX_EXAMPLES else ''
  return f'; its NIfTI files do not follow this naming: {shown}{more}'


def _no_case_message(
  root: str, forced: layouts.Layout | None, stray_files: list[str]
) -> str:
  message = (
    f'data_dir must hold BraTS case folders named after the case id, at most '
    f'{MAX_SEARCH_DEPTH} levels below it: {_expected_names(forced)}. Found '
    f'no case folder in {root!r}'
  )
  if not stray_files:
    return message + ' and no NIfTI file.'
  example = stray_files[0]
  folder = os.path.basename(os.path.dirname(example))
  return (
    f'{message}, but {len(stray_files)} NIfTI file(s) whose names do not '
    f'follow the convention, e.g. {example!r} (a file in folder {folder!r} '
    f"must be named '{folder}_<suffix>.nii.gz' or "
    f"'{folder}-<suffix>.nii.gz')."
  )


def _order_mapping(
  image_paths: Mapping[str, PathLike], forced: layouts.Layout | None
) -> tuple[layouts.Layout, list[str]]:
  """Returns the layout the mapping's keys name and its paths in order."""
  keys = set(image_paths)
  candidates = [forced] if forced else list(layouts.LAYOUTS.values())
  for layout in candidates:
    if keys == set(layout.modalities):
      return layout, [
        os.path.abspath(os.fspath(image_paths[s])) for s in layout.modalities
      ]
  expected = ' or '.join(str(list(layout.modalities)) for layout in candidates)
  raise errors.BratsDataError(
    f'image_paths keys must be the modality suffixes {expected}. '
    f'Found {sorted(keys)}.'
  )


def _suffix_of(name: str, layout: layouts.Layout) -> str | None:
  """The layout suffix a file name ends with, e.g. 't1ce', or None."""
  stem = _nifti_stem(name)
  for suffix in _suffixes(layout):
    if stem.endswith(layout.separator + suffix):
      return suffix
  return None


def _infer_layout(paths: list[str]) -> layouts.Layout:
  names = [os.path.basename(p) for p in paths]
  for layout in layouts.LAYOUTS.values():
    if all(_suffix_of(n, layout) for n in names):
      return layout
  raise errors.BratsDataError(
    f'image_paths must be named {_expected_names(None)} when layout is None. '
    f'Found {names}; pass layout= and case_id= for other names.'
  )


def _check_file_order(
  paths: list[str], label: str | None, layout: layouts.Layout
) -> None:
  """Rejects a file whose name says it is another modality of the layout."""
  for position, (suffix, path) in enumerate(
    zip(layout.modalities, paths, strict=True)
  ):
    named = _suffix_of(os.path.basename(path), layout)
    if named is not None and named != suffix:
      raise errors.BratsDataError(
        f'image_paths[{position}] must be the {suffix!r} file (order '
        f'{list(layout.modalities)}). Found a file named as {named!r}.',
        path=path,
      )
  if label is not None:
    named = _suffix_of(os.path.basename(label), layout)
    if named is not None and named != layout.label_suffix:
      raise errors.BratsDataError(
        f'label_path must be the {layout.label_suffix!r} file. Found a file '
        f'named as modality {named!r}.',
        path=label,
      )


def _infer_case_id(
  paths: list[str], label: str | None, layout: layouts.Layout
) -> str:
  """The case id all file names share."""
  named = list(zip(layout.modalities, paths, strict=True))
  if label is not None:
    named.append((layout.label_suffix, label))
  ids = {}
  for suffix, path in named:
    stem = _nifti_stem(os.path.basename(path))
    ending = layout.separator + suffix
    if not stem.endswith(ending) or stem == ending:
      raise errors.BratsDataError(
        f"file name must be '<case>{ending}.nii.gz' to infer the case id. "
        f'Found {os.path.basename(path)!r}; pass case_id= for other names.',
        path=path,
      )
    ids.setdefault(stem[: -len(ending)], path)
  if len(ids) > 1:
    raise errors.BratsDataError(
      f'files of one case must share a case id. Found {sorted(ids)} '
      f'(e.g. {list(ids.values())[:2]}).'
    )
  return next(iter(ids))


def _check_file_exists(path: str, what: str, case_id: str) -> None:
  if not os.path.isfile(path):
    found = 'a directory' if os.path.isdir(path) else 'no such file'
    raise errors.BratsDataError(
      f'{what} file must exist. Found {found}.', case_id=case_id, path=path
    )


# Loading helpers.


class _Volume(NamedTuple):
  """One NIfTI file read into memory."""

  case_id: str
  path: str
  what: str
  data: np.ndarray
  affine: np.ndarray
  spacing: tuple[float, float, float]
  axcodes: tuple[str, str, str] | None


def _read_volume(path: str, what: str, case_id: str) -> _Volume:
  """Reads one NIfTI file, turning every failure into a BratsDataError."""

  def fail(message, cause=None):
    raise errors.BratsDataError(message, case_id=case_id, path=path) from cause

  # The whole file is read and decompressed before nibabel parses it: a
  # lazy `nib.load` stops reading at the last voxel, so a gzip member whose
  # data are corrupt but long enough would load as garbage without the CRC
  # check at the end of the stream. Parsing and the voxel read stay inside
  # the try so that a short file fails here too.
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
      raw = gzip.decompress(raw)
    elif path.endswith('.gz'):
      fail(
        f'{what} must be a NIfTI image, gzip-compressed as its name ends in '
        f'.gz. Found a file that is not gzip-compressed and starts with '
        f'{raw[:8]!r}.'
      )
    image_class = _nifti_class(raw)
    if image_class is None:
      found = f'data starting with {raw[:8]!r}' if raw else 'an empty file'
      fail(
        f'{what} must be a NIfTI-1 or NIfTI-2 image. Found no NIfTI header '
        f'but {found}.'
      )
    header_size = next(n for n, c in _HEADER_SIZES.items() if c is image_class)
    if len(raw) < header_size:
      fail(
        f'{what} must hold a complete {header_size}-byte NIfTI header. Found '
        f'a truncated file of {len(raw)} bytes.'
      )
    img = image_class.from_bytes(raw)
    data = np.asanyarray(img.dataobj)
  except PermissionError as e:
    fail(_os_error_message(what, e), e)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    fail(
      f'{what} must be a complete gzip stream. Found a truncated or corrupt '
      f'gzip file ({type(e).__name__}: {e}).',
      e,
    )
  except (
    filebasedimages.ImageFileError,
    spatialimages.HeaderDataError,
    wrapstruct.WrapStructError,
  ) as e:
    fail(f'{what} must be a NIfTI image. Found an invalid header: {e}', e)
  except (ValueError, TypeError, IndexError, OverflowError, MemoryError) as e:
    # nibabel's own checks of header fields against the data (data type
    # codes, dimensions, offsets) surface as these.
    fail(
      f'{what} must be a NIfTI image whose header describes its data. Found '
      f'{type(e).__name__}: {e}',
      e,
    )
  except OSError as e:
    fail(_os_error_message(what, e), e)
  shape = data.shape
  if len(shape) > 3 and all(n == 1 for n in shape[3:]):
    data = data.reshape(shape[:3])
  if data.ndim != 3:
    fail(
      f'{what} must be a 3-D volume (trailing axes of size 1 are dropped). '
      f'Found shape {shape}.'
    )
  if data.dtype.kind not in 'biuf':
    fail(f'{what} must hold real numbers. Found dtype {data.dtype}.')
  spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
  if not all(np.isfinite(z) and z > 0 for z in spacing):
    fail(
      f'{what} voxel sizes (header field pixdim[1:4]) must be positive. '
      f'Found {spacing}.'
    )
  affine = np.asarray(img.affine, np.float64)
  if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) == 0:
    fail(
      f'{what} affine (qform/sform) must be finite and invertible. Found '
      f'{affine[:3].tolist()}.'
    )
  return _Volume(
    case_id=case_id,
    path=path,
    what=what,
    data=data,
    affine=affine,
    spacing=spacing,
    axcodes=_axcodes(img.header, what, fail),
  )


def _axcodes(header, what: str, fail) -> tuple[str, str, str] | None:
  """The orientation of a NIfTI header, None if it sets neither transform.

  The affine nibabel uses is the sform when `sform_code` is set, else the
  qform; when both are set they must agree on the direction of every axis.
  """
  qform_code = int(header['qform_code'])
  sform_code = int(header['sform_code'])
  if qform_code == 0 and sform_code == 0:
    return None
  codes = {}
  for name, code, matrix in (
    ('qform', qform_code, header.get_qform),
    ('sform', sform_code, header.get_sform),
  ):
    if code:
      try:
        transform = matrix()
      except ValueError as e:
        # nibabel's check of the quaternion parameters.
        fail(f'{what} {name} must be a valid transform. Found: {e}', e)
      try:
        axcodes = tuple(nib.aff2axcodes(transform))
      except (ValueError, np.linalg.LinAlgError):
        axcodes = (None,)
      if None in axcodes:
        fail(
          f'{what} {name} must be an invertible voxel-to-world matrix. '
          f'Found {np.round(transform[:3], 6).tolist()}.'
        )
      codes[name] = axcodes
  if len(set(codes.values())) > 1:
    fail(
      f'{what} qform and sform must agree on the orientation. Found qform '
      f'{"".join(codes["qform"])} (qform_code {qform_code}) and sform '
      f'{"".join(codes["sform"])} (sform_code {sform_code}); fix the header '
      f"(e.g. FSL's `fslorient -copysform2qform`) or clear the wrong one."
    )
  return codes.get('sform', codes.get('qform'))


def _nifti_class(raw: bytes) -> type[nib.Nifti1Image] | None:
  """The nibabel class for a header's `sizeof_hdr`, in either byte order."""
  for byteorder in ('little', 'big'):
    size = int.from_bytes(raw[:4], byteorder)
    if len(raw) >= 4 and size in _HEADER_SIZES:
      return _HEADER_SIZES[size]
  return None


def _check_same_grid(
  first: _Volume, volume: _Volume, what: str, affine_atol: float
) -> None:
  reference = f'the first modality ({os.path.basename(first.path)!r})'
  if volume.data.shape != first.data.shape:
    raise errors.BratsDataError(
      f'{what} shape must match that of {reference}, '
      f'{first.data.shape}. Found {volume.data.shape}.',
      case_id=volume.case_id,
      path=volume.path,
    )
  if volume.axcodes != first.axcodes:
    raise errors.BratsDataError(
      f'{what} orientation must match that of {reference}, '
      f'{_axcodes_text(first.axcodes)}. Found '
      f'{_axcodes_text(volume.axcodes)}; the files of a case are never '
      f'resampled onto each other.',
      case_id=volume.case_id,
      path=volume.path,
    )
  difference = float(np.max(np.abs(volume.affine - first.affine)))
  if not difference <= affine_atol:
    raise errors.BratsDataError(
      f'{what} affine must match that of {reference} within '
      f'affine_atol={affine_atol}. Found a largest absolute difference of '
      f'{difference:.6g}.',
      case_id=volume.case_id,
      path=volume.path,
    )


def _axcodes_text(axcodes: tuple[str, ...] | None) -> str:
  if axcodes is None:
    return 'unknown (neither qform_code nor sform_code set)'
  return ''.join(axcodes)


def _to_float32(volume: _Volume, what: str) -> np.ndarray:
  data = volume.data
  if data.dtype.kind == 'f':
    _check_finite(volume, what)
  with np.errstate(over='ignore', invalid='ignore'):
    converted = data.astype(np.float32, copy=False)
  if not np.isfinite(converted).all():
    raise errors.BratsDataError(
      f'{what} values must fit in float32. Found {np.max(np.abs(data)):.6g}.',
      case_id=volume.case_id,
      path=volume.path,
    )
  return converted


def _check_finite(volume: _Volume, what: str) -> None:
  finite = np.isfinite(volume.data)
  if finite.all():
    return
  nan = int(np.isnan(volume.data).sum())
  inf = int(finite.size - finite.sum()) - nan
  index = tuple(int(i) for i in np.argwhere(~finite)[0])
  raise errors.BratsDataError(
    f'{what} voxels must be finite. Found {nan} NaN and {inf} Inf voxel(s), '
    f'the first at index {index} ({volume.data[index]}).',
    case_id=volume.case_id,
    path=volume.path,
  )


def _checked_labels(volume: _Volume, layout: layouts.Layout) -> np.ndarray:
  """Returns the label map as uint8 after checking its values."""
  data = volume.data

  def fail(message):
    raise errors.BratsDataError(
      message, case_id=volume.case_id, path=volume.path
    )

  if data.dtype.kind == 'f':
    _check_finite(volume, 'segmentation')
    fractional = data != np.round(data)
    if fractional.any():
      values = np.unique(data[fractional])
      index = tuple(int(i) for i in np.argwhere(fractional)[0])
      fail(
        f'label must be an integer. Found non-integer value(s) '
        f'{_format_values(values)} in {int(fractional.sum())} voxel(s), the '
        f'first at index {index}.'
      )
  allowed = list(layout.labels)
  outside = ~np.isin(data, allowed)
  if outside.any():
    values, counts = np.unique(data[outside], return_counts=True)
    found = ', '.join(
      f'{_format_value(v)} in {int(n)} voxel(s)'
      for v, n in zip(values[:_MAX_EXAMPLES], counts, strict=False)
    )
    if len(values) > _MAX_EXAMPLES:
      found += f' and {len(values) - _MAX_EXAMPLES} other value(s)'
    fail(
      f'label must be one of {sorted(allowed)} ({layout.description}). '
      f'Found {found}.{_other_layout_hint(values, layout)}'
    )
  return data.astype(np.uint8)


def _other_layout_hint(values: np.ndarray, layout: layouts.Layout) -> str:
  for other in layouts.LAYOUTS.values():
    if other is not layout and np.isin(values, other.labels).all():
      return (
        f' These labels follow the {other.description}; the case is named '
        f'in the {layout.description}.'
      )
  return ''


def _format_value(value) -> str:
  value = float(value)
  return str(int(value)) if value.is_integer() else f'{value:g}'


def _format_values(values: np.ndarray) -> str:
  shown = ', '.join(_format_value(v) for v in values[:_MAX_EXAMPLES])
  return shown + (', ...' if len(values) > _MAX_EXAMPLES else '')


# Error messages.


def _os_error_message(what: str, error: OSError) -> str:
  if isinstance(error, PermissionError):
    return f'{what} must be readable. Found permission denied ({error}).'
  if isinstance(error, FileNotFoundError):
    return f'{what} must exist. Found no such file ({error}).'
  if isinstance(error, IsADirectoryError):
    return f'{what} must be a file. Found a directory.'
  if error.errno is None:
    # nibabel's own "Expected N bytes, got M bytes" for short voxel data.
    return (
      f'{what} must hold the complete image data. Found a truncated file: '
      f'{str(error).splitlines()[0]}.'
    )
  return f'{what} must be readable. Found {error}.'
