"""Synthetic BraTS-style cases written as real NIfTI files.

No BraTS data can be downloaded where this project is built and tested, so
the loading code, the input pipeline and the demos run on phantoms that look
like the real thing to a segmentation network:

* Skull-stripped heads: a brain-shaped region (exactly 0 outside it) with
  white matter, a folded cortical ribbon of grey matter, deep grey nuclei,
  lateral and third ventricles, sulcal and interhemispheric CSF.
* Gliomas built from smoothed random fields (irregular, at varying sizes and
  places): an oedema shell (label 2) around a tumour core; in high-grade
  (HGG-like) cases the core is a necrotic centre (label 1) inside an enhancing
  rim (label 4, or 3 in the 2023 layout); low-grade (LGG-like) cases have a
  non-enhancing core (label 1) with at most a small enhancing patch, as in
  BraTS (Menze et al. 2015; Bakas et al. 2018).
* Four sequences with the usual relative contrasts: T1 WM > GM > CSF; T1ce
  like T1 plus a bright enhancing rim; T2 CSF brightest, GM > WM, oedema and
  necrosis bright; FLAIR CSF suppressed, oedema brightest; necrosis dark on
  T1 and T1ce.
* Per-institution scanners (`ScannerProfile`), fixed by the seed: intensity
  scale, gamma-like contrast, partial-volume blur, multiplicative bias field
  strength and Rician noise level differ between institutions, so federated
  clients are not identically distributed.

Case ids carry the institution token the partition code parses:
`Brats18_{TOKEN}_{n:03d}_1` (2018-2021 layout) and `BraTS-{TOKEN}-{n:05d}-000`
(2023 layout), `n` the case's global index. Tokens are the BraTS 2018
institutions in the order of Li et al. 2019 (arXiv 1910.00962), then
`SITE14`, `SITE15`, ...

Determinism: institution `i`'s scanner comes from
`SeedSequence(seed, spawn_key=(0, i))`, case `k`'s anatomy, tumour and noise
from `SeedSequence(seed, spawn_key=(1, k))` and its grade from
`spawn_key=(2, k)`. A case's arrays therefore depend only on the seed, its
index, its institution, its grade and the shape, never on how many other
cases are generated.

The phantom is defined in normalised coordinates (every axis spans [-1, 1]),
so the brain fills most of the grid whatever the shape; `spacing` only sets
the affine and the header zooms.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import logging
import math
import os
import sys
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
import tqdm

import tff_brats
from tff_brats.data import layouts
from tff_brats.utils import atomic
from tff_brats.utils import checks

# Institution tokens of BraTS 2018 in the order of Li et al. 2019, Table 1.
BRATS2018_INSTITUTIONS = (
  '2013',
  'CBICA',
  'TCIA01',
  'TCIA02',
  'TCIA03',
  'TCIA04',
  'TCIA05',
  'TCIA06',
  'TCIA08',
  'TCIA09',
  'TCIA10',
  'TCIA12',
  'TCIA13',
)
# Training cases per institution in Li et al. 2019 (242 in total).
PAPER_INSTITUTION_SIZES = (18, 77, 20, 30, 11, 7, 3, 6, 13, 9, 32, 5, 11)
# BraTS 2018 training data: 210 HGG and 75 LGG cases.
BRATS2018_LGG_FRACTION = 75 / 285

INSTITUTION_SIZES = ('even', 'paper')
GRADES = ('HGG', 'LGG')
MANIFEST_NAME = 'synthetic.json'
# Bump whenever the generated content changes for unchanged parameters.
GENERATOR_VERSION = 1

# Tissue classes of `SyntheticCase.tissue`.
BACKGROUND = 0
CSF = 1
GREY_MATTER = 2
WHITE_MATTER = 3
EDEMA = 4
NECROSIS = 5
ENHANCING = 6
NON_ENHANCING = 7

# Relative intensity of each tissue class in (T1, T1ce, T2, FLAIR), white
# matter on T1 ~ 1. Orderings follow the radiological appearance of gliomas.
_TISSUE_CONTRAST = np.array(
  [
    [0.00, 0.00, 0.00, 0.00],  # background
    [0.30, 0.30, 1.30, 0.12],  # CSF
    [0.62, 0.66, 0.62, 0.62],  # grey matter
    [0.90, 0.92, 0.42, 0.48],  # white matter
    [0.60, 0.62, 0.90, 0.95],  # oedema
    [0.30, 0.32, 1.05, 0.50],  # necrosis
    [0.62, 1.60, 0.72, 0.80],  # enhancing tumour
    [0.50, 0.52, 0.95, 0.90],  # non-enhancing tumour
  ],
  np.float32,
)
# Typical scanner intensity of white matter on T1 per sequence.
_BASE_SCALE = (600.0, 800.0, 1400.0, 700.0)

_SCANNER_STREAM = 0
_CASE_STREAM = 1
_GRADE_STREAM = 2

_INT16_MAX = np.iinfo(np.int16).max

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScannerProfile:
  """Acquisition characteristics of one institution.

  Attributes:
    intensity_scale: Intensity of T1 white matter-like signal per sequence
      (T1, T1ce, T2, FLAIR), in scanner units.
    contrast: Per-sequence exponent applied to relative tissue intensities
      (1 keeps the reference contrast; orderings are preserved).
    blur: Gaussian partial-volume blur, in voxels.
    bias_strength: Standard deviation of the log of the smooth multiplicative
      bias field.
    noise_level: Rician noise standard deviation as a fraction of
      `intensity_scale`.
  """

  intensity_scale: tuple[float, float, float, float]
  contrast: tuple[float, float, float, float]
  blur: float
  bias_strength: float
  noise_level: float


@dataclasses.dataclass(frozen=True)
class SyntheticCase:
  """One generated case.

  Attributes:
    case_id: The BraTS-style case id.
    institution: The institution token.
    grade: 'HGG' or 'LGG'.
    image: int16 `[D, H, W, 4]`, the layout's modality order.
    labels: uint8 `[D, H, W]` in the layout's label convention.
    tissue: uint8 `[D, H, W]` tissue classes (`BACKGROUND`, `CSF`, ...,
      `NON_ENHANCING`), the ground truth behind the image.
    brain_mask: bool `[D, H, W]`; the image is exactly 0 outside it.
    affine: float64 `[4, 4]` voxel-to-world matrix.
  """

  case_id: str
  institution: str
  grade: str
  image: np.ndarray
  labels: np.ndarray
  tissue: np.ndarray
  brain_mask: np.ndarray
  affine: np.ndarray


def institution_tokens(num_institutions: int) -> tuple[str, ...]:
  """Tokens of the first `num_institutions` institutions."""
  checks.check_positive_int('num_institutions', num_institutions)
  extra = range(len(BRATS2018_INSTITUTIONS) + 1, num_institutions + 1)
  tokens = BRATS2018_INSTITUTIONS + tuple(f'SITE{i}' for i in extra)
  return tokens[:num_institutions]


def case_id(layout: str | layouts.Layout, institution: str, index: int) -> str:
  """The case id of case `index` from `institution` in `layout`."""
  layout = _as_layout(layout)
  if layout.name == 'brats2018':
    return f'Brats18_{institution}_{index:03d}_1'
  return f'BraTS-{institution}-{index:05d}-000'


def institution_case_counts(
  num_cases: int, num_institutions: int, institution_sizes: str = 'even'
) -> list[int]:
  """Number of cases of each institution.

  Args:
    num_cases: Total number of cases.
    num_institutions: Number of institutions, at most `num_cases`.
    institution_sizes: 'even' (sizes differ by at most one) or 'paper'
      (proportional to `PAPER_INSTITUTION_SIZES`, largest remainders, each
      institution at least one case).

  Returns:
    A list of `num_institutions` positive counts summing to `num_cases`.
  """
  _check_counts(num_cases, num_institutions, institution_sizes)
  if institution_sizes == 'even':
    base, extra = divmod(num_cases, num_institutions)
    return [base + (i < extra) for i in range(num_institutions)]
  weights = np.array(PAPER_INSTITUTION_SIZES[:num_institutions], float)
  quotas = num_cases * weights / weights.sum()
  counts = np.maximum(np.floor(quotas).astype(int), 1)
  while counts.sum() > num_cases:
    excess = np.where(counts > 1, counts - quotas, -np.inf)
    counts[int(np.argmax(excess))] -= 1
  while counts.sum() < num_cases:
    counts[int(np.argmax(quotas - counts))] += 1
  return counts.tolist()


def assign_institutions(
  num_cases: int, num_institutions: int, institution_sizes: str = 'even'
) -> list[int]:
  """Institution index of every case.

  'even' deals cases round robin (case `k` goes to institution
  `k % num_institutions`, whatever `num_cases` is); 'paper' gives each
  institution a contiguous block of `institution_case_counts` cases.
  """
  counts = institution_case_counts(
    num_cases, num_institutions, institution_sizes
  )
  if institution_sizes == 'even':
    return [k % num_institutions for k in range(num_cases)]
  return [i for i, count in enumerate(counts) for _ in range(count)]


def case_grade(case_index: int, *, lgg_fraction: float, seed: int) -> str:
  """'LGG' with probability `lgg_fraction`, from the case's own stream."""
  checks.check_non_negative_int('case_index', case_index)
  checks.check_probability('lgg_fraction', lgg_fraction)
  checks.check_non_negative_int('seed', seed)
  rng = _rng(seed, _GRADE_STREAM, case_index)
  return 'LGG' if rng.random() < lgg_fraction else 'HGG'


def scanner_profile(institution: int, *, seed: int) -> ScannerProfile:
  """The scanner of institution number `institution` (0-based)."""
  checks.check_non_negative_int('institution', institution)
  checks.check_non_negative_int('seed', seed)
  rng = _rng(seed, _SCANNER_STREAM, institution)
  scale = np.array(_BASE_SCALE) * np.exp(rng.uniform(-0.6, 0.6, 4))
  contrast = rng.uniform(0.85, 1.2, 4)
  return ScannerProfile(
    intensity_scale=tuple(round(float(s), 3) for s in scale),
    contrast=tuple(round(float(c), 4) for c in contrast),
    blur=round(float(rng.uniform(0.4, 0.9)), 4),
    bias_strength=round(float(rng.uniform(0.05, 0.35)), 4),
    noise_level=round(float(rng.uniform(0.01, 0.06)), 4),
  )


def nifti_affine(
  shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
  """Voxel-to-world matrix in the orientation of the BraTS 2018 files.

  BraTS files (converted from ITK's LPS) flip the first two axes:
  `diag(-sx, -sy, sz)` with the second axis' origin at its last voxel.
  """
  sx, sy, sz = (float(s) for s in spacing)
  affine = np.diag([-sx, -sy, sz, 1.0])
  affine[1, 3] = (int(shape[1]) - 1) * sy
  return affine


def generate_case(
  case_index: int,
  *,
  institution: int = 0,
  grade: str = 'HGG',
  shape: Sequence[int] = (64, 64, 64),
  spacing: Sequence[float] = (1.0, 1.0, 1.0),
  layout: str = 'brats2018',
  seed: int = 0,
) -> SyntheticCase:
  """Generates one case in memory.

  Args:
    case_index: Global index of the case (0-based); part of its id and of its
      random stream.
    institution: Institution index (0-based); selects the token and the
      scanner profile.
    grade: 'HGG' (necrotic core, enhancing rim, oedema) or 'LGG'
      (non-enhancing core, at most a small enhancing patch, oedema).
    shape: Volume shape, each dimension at least 16.
    spacing: Voxel size in mm (affine only).
    layout: 'brats2018' or 'brats2023'; sets the id format and the labels.
    seed: Non-negative integer seed.

  Returns:
    A `SyntheticCase`.
  """
  checks.check_non_negative_int('case_index', case_index)
  checks.check_non_negative_int('institution', institution)
  checks.check_one_of('grade', grade, GRADES)
  shape = _check_shape(shape)
  spacing = _check_spacing(spacing)
  layout = _as_layout(layout)
  checks.check_non_negative_int('seed', seed)
  token = institution_tokens(institution + 1)[institution]
  profile = scanner_profile(institution, seed=seed)
  rng = _rng(seed, _CASE_STREAM, case_index)
  geometry = _Geometry(rng, shape)
  tissue, brain = _anatomy(rng, geometry)
  regions = _tumour(rng, geometry, tissue, brain, grade)
  tissue = _paint_tumour(tissue, regions, grade)
  image = _render(rng, geometry, tissue, brain, profile)
  return SyntheticCase(
    case_id=case_id(layout, token, case_index),
    institution=token,
    grade=grade,
    image=image,
    labels=_labels(tissue, layout),
    tissue=tissue,
    brain_mask=brain,
    affine=nifti_affine(shape, spacing),
  )


def generate_dataset(
  output_dir: str | os.PathLike[str],
  *,
  num_cases: int,
  num_institutions: int,
  shape: Sequence[int] = (64, 64, 64),
  spacing: Sequence[float] = (1.0, 1.0, 1.0),
  layout: str = 'brats2018',
  grade_folders: bool | None = None,
  institution_sizes: str = 'even',
  lgg_fraction: float = BRATS2018_LGG_FRACTION,
  seed: int = 0,
  overwrite: bool = False,
  progress: bool = True,
) -> dict[str, Any]:
  """Writes a synthetic BraTS-style data set of NIfTI files.

  Layouts:

  * 'brats2018': `<out>/<HGG|LGG>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`
    (`grade_folders=False`: `<out>/<case>/...`), labels 0, 1, 2, 4.
  * 'brats2023': `<out>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`, labels
    0, 1, 2, 3.

  Images are int16, segmentations uint8; the affine and the header zooms
  carry `spacing`. `<out>/synthetic.json` records the parameters, the
  package version, every institution's scanner and every case's id,
  institution, grade, folder and tumour voxel count per label.

  The data set is built in a sibling folder `<out>.tmp-<random>` and renamed
  to `<out>` only when complete; on any error the temporary folder is
  removed. If `<out>` already holds a data set made with the same parameters
  nothing is done; with different parameters it is an error unless
  `overwrite`, and then the old folder is replaced only after the new one is
  complete. A non-empty `<out>` without `synthetic.json` is never touched.

  Args:
    output_dir: Folder to create.
    num_cases: Number of cases, at least 1.
    num_institutions: Number of institutions, 1 to `num_cases`.
    shape: Volume shape, each dimension at least 16.
    spacing: Voxel size in mm, each positive.
    layout: 'brats2018' or 'brats2023'.
    grade_folders: Whether to put 2018-layout cases under `HGG/` and `LGG/`;
      None means yes for 'brats2018'. The 2023 layout has no grade folders.
    institution_sizes: 'even' or 'paper', see `institution_case_counts`.
    lgg_fraction: Probability that a case is LGG-like, in [0, 1].
    seed: Non-negative integer seed.
    overwrite: Replace an existing data set made with other parameters.
    progress: Show a progress bar over cases on stderr.

  Returns:
    The content of `synthetic.json`.

  Raises:
    ValueError: An argument is invalid.
    FileExistsError: `output_dir` holds something else (see above).
  """
  layout_ = _as_layout(layout)
  grade_folders = _check_grade_folders(grade_folders, layout_)
  _check_counts(num_cases, num_institutions, institution_sizes)
  checks.check_probability('lgg_fraction', lgg_fraction)
  checks.check_non_negative_int('seed', seed)
  parameters = {
    'num_cases': num_cases,
    'num_institutions': num_institutions,
    'shape': list(_check_shape(shape)),
    'spacing': list(_check_spacing(spacing)),
    'layout': layout_.name,
    'grade_folders': grade_folders,
    'institution_sizes': institution_sizes,
    'lgg_fraction': float(lgg_fraction),
    'seed': seed,
  }
  output_dir = os.path.abspath(os.fspath(output_dir))
  existing = _existing_manifest(output_dir, parameters, overwrite)
  if existing is not None:
    _logger.info(
      '%s already holds synthetic data made with these parameters; '
      'nothing to do.',
      output_dir,
    )
    return existing
  # `_existing_manifest` has already refused every folder that must not be
  # replaced, so the staged folder may replace what is there.
  with atomic.staged_directory(output_dir, replace=True) as temp_dir:
    summary = _write_dataset(temp_dir, parameters, progress)
  _logger.info('Wrote %d synthetic cases to %s.', num_cases, output_dir)
  return summary


def _write_dataset(
  folder: str, parameters: dict[str, Any], progress: bool
) -> dict[str, Any]:
  """Generates every case into `folder` and writes the manifest."""
  p = parameters
  layout = layouts.get_layout(p['layout'])
  tokens = institution_tokens(p['num_institutions'])
  assignment = assign_institutions(
    p['num_cases'], p['num_institutions'], p['institution_sizes']
  )
  cases = []
  bar = tqdm.tqdm(
    total=p['num_cases'],
    desc='synthetic cases',
    unit='case',
    file=sys.stderr,
    disable=not progress,
  )
  with bar:
    for index, institution in enumerate(assignment):
      grade = case_grade(index, lgg_fraction=p['lgg_fraction'], seed=p['seed'])
      case = generate_case(
        index,
        institution=institution,
        grade=grade,
        shape=p['shape'],
        spacing=p['spacing'],
        layout=layout.name,
        seed=p['seed'],
      )
      relative = case.case_id
      if p['grade_folders']:
        relative = os.path.join(grade, relative)
      _write_case(os.path.join(folder, relative), case, layout)
      counts = {
        str(label): int(np.count_nonzero(case.labels == label))
        for label in layout.labels[1:]
      }
      cases.append(
        {
          'case_id': case.case_id,
          'institution': case.institution,
          'grade': grade,
          'path': relative,
          'tumour_voxels': counts,
        }
      )
      bar.update()
  institutions = []
  for i, token in enumerate(tokens):
    grades = [c['grade'] for c in cases if c['institution'] == token]
    institutions.append(
      {
        'token': token,
        'num_cases': len(grades),
        'num_hgg': grades.count('HGG'),
        'num_lgg': grades.count('LGG'),
        'scanner': dataclasses.asdict(scanner_profile(i, seed=p['seed'])),
      }
    )
  summary = json.loads(
    json.dumps(
      {
        'generator_version': GENERATOR_VERSION,
        'tff_brats_version': tff_brats.__version__,
        'parameters': parameters,
        'institutions': institutions,
        'cases': cases,
      }
    )
  )
  with open(os.path.join(folder, MANIFEST_NAME), 'w') as f:
    json.dump(summary, f, indent=2)
    f.write('\n')
  return summary


def _write_case(
  folder: str, case: SyntheticCase, layout: layouts.Layout
) -> None:
  os.makedirs(folder)
  for channel, suffix in enumerate(layout.modalities):
    path = os.path.join(folder, layout.file_name(case.case_id, suffix))
    _write_nifti(case.image[..., channel], case.affine, path)
  path = os.path.join(folder, layout.file_name(case.case_id, 'seg'))
  _write_nifti(case.labels, case.affine, path)


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
  """Saves `array` unscaled in its own dtype, qform and sform = `affine`."""
  image = nib.Nifti1Image(np.ascontiguousarray(array), affine)
  header = image.header
  header.set_data_dtype(array.dtype)
  header.set_xyzt_units('mm')
  header.set_qform(affine, code='scanner')
  header.set_sform(affine, code='scanner')
  header['scl_slope'] = 1.0
  header['scl_inter'] = 0.0
  nib.save(image, path)


def _existing_manifest(
  output_dir: str, parameters: dict[str, Any], overwrite: bool
) -> dict[str, Any] | None:
  """The manifest to reuse, None to generate, or an error."""
  if not os.path.lexists(output_dir):
    return None
  if not os.path.isdir(output_dir):
    raise FileExistsError(
      f'output_dir must be a folder or not exist. Found a file: {output_dir!r}.'
    )
  manifest_path = os.path.join(output_dir, MANIFEST_NAME)
  if not os.path.exists(manifest_path):
    if os.listdir(output_dir):
      raise FileExistsError(
        f'output_dir {output_dir!r} is not empty and has no {MANIFEST_NAME}, '
        'so it was not made by this generator; it is left untouched. Choose '
        'another folder or remove it.'
      )
    return None
  try:
    with open(manifest_path) as f:
      stored = json.load(f)
    stored_parameters = stored['parameters']
    stored_version = stored['generator_version']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise FileExistsError(
      f'output_dir {output_dir!r} has an unreadable {MANIFEST_NAME} ({e}). '
      'Remove the folder to regenerate it.'
    ) from e
  requested = json.loads(json.dumps(parameters))
  differences = [
    f'{key}={requested.get(key)!r} (on disk: {stored_parameters.get(key)!r})'
    for key in sorted(set(requested) | set(stored_parameters))
    if requested.get(key) != stored_parameters.get(key)
  ]
  if stored_version != GENERATOR_VERSION:
    differences.append(
      f'generator_version={GENERATOR_VERSION} (on disk: {stored_version!r})'
    )
  if not differences:
    missing = _missing_files(output_dir, stored)
    if missing:
      raise FileExistsError(
        f'output_dir {output_dir!r} holds synthetic data made with these '
        f'parameters but {len(missing)} files are missing (e.g. '
        f'{missing[0]!r}). Pass overwrite=True to regenerate it.'
      )
    return stored
  if overwrite:
    return None
  raise FileExistsError(
    f'output_dir {output_dir!r} holds synthetic data made with different '
    f'parameters: {", ".join(differences)}. Pass overwrite=True to replace '
    'it, or choose another folder.'
  )


def _missing_files(output_dir: str, manifest: dict[str, Any]) -> list[str]:
  layout = layouts.get_layout(manifest['parameters']['layout'])
  missing = []
  for case in manifest['cases']:
    for suffix in (*layout.modalities, layout.label_suffix):
      path = os.path.join(
        output_dir, case['path'], layout.file_name(case['case_id'], suffix)
      )
      if not os.path.exists(path):
        missing.append(path)
  return missing


class _Geometry:
  """Normalised voxel coordinates of one case, with a random head pose."""

  def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int]):
    self.shape = shape
    # Size of one voxel in normalised units, per axis.
    self.voxel = np.array([2.0 / n for n in shape], np.float32)
    u = [((2 * np.arange(n) + 1) / n - 1).astype(np.float32) for n in shape]
    self.axes = (
      u[0][:, None, None],
      u[1][None, :, None],
      u[2][None, None, :],
    )
    angle = rng.uniform(-0.14, 0.14)
    shift = rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    x, y, z = (a - s for a, s in zip(self.axes, shift, strict=True))
    # Head coordinates: x left-right, y posterior-anterior, z inferior-superior.
    self.x = cos * x - sin * y
    self.y = sin * x + cos * y
    self.z = z

  def field(self, rng: np.random.Generator, length: float) -> np.ndarray:
    """Unit-variance smooth Gaussian random field.

    Gaussian kernels on a grid of nodes `length` apart (at least 1.5 voxels)
    weight iid normal node values; the kernel is separable, so the field
    costs three small matrix products, and each row is L2-normalised so the
    field has unit variance at every voxel.
    """
    matrices = []
    for n in self.shape:
      step = max(length, 3.0 / n)
      nodes = np.arange(-1 - 2 * step, 1 + 2 * step + 1e-6, step)
      u = (2 * np.arange(n) + 1) / n - 1
      w = np.exp(-0.5 * ((u[:, None] - nodes[None, :]) / step) ** 2)
      w /= np.linalg.norm(w, axis=1, keepdims=True)
      matrices.append(w.astype(np.float32))
    sizes = [w.shape[1] for w in matrices]
    values = rng.standard_normal(sizes, dtype=np.float32)
    values = values @ matrices[2].T
    values = matrices[1] @ values
    return np.tensordot(matrices[0], values, axes=(1, 0))


def _anatomy(
  rng: np.random.Generator, g: _Geometry
) -> tuple[np.ndarray, np.ndarray]:
  """Tissue classes of a healthy brain and the brain mask."""
  x, y, z = g.x, g.y, g.z
  voxel = float(g.voxel.mean())
  size = rng.uniform(0.92, 1.03)
  # An egg: narrower in front, flatter below.
  a = 0.80 * size * (1 - 0.08 * y)
  b = 0.92 * size
  c = np.where(z < 0, 0.76, 0.86).astype(np.float32) * size
  rho = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)
  rho = rho + 0.03 * g.field(rng, 0.3)
  brain = rho < 1
  depth = 1 - rho

  tissue = np.full(g.shape, WHITE_MATTER, np.uint8)
  gyri = g.field(rng, 0.1)
  # Cortical ribbon whose inner border folds with the gyral field.
  tissue[depth < np.maximum(0.15 + 0.09 * gyri, 0.04)] = GREY_MATTER
  upper = (z > -0.25) & (depth < 0.5)
  tissue[upper & (np.abs(x) < 0.07)] = GREY_MATTER
  for side in (-1, 1):
    for centre, radii in (
      ((0.12, -0.08, -0.02), (0.09, 0.13, 0.09)),  # thalamus
      ((0.22, 0.12, 0.02), (0.06, 0.12, 0.09)),  # striatum
    ):
      tissue[_ellipsoid(g, (side * centre[0], *centre[1:]), radii)] = (
        GREY_MATTER
      )
  # CSF: surface layer, deep sulci, interhemispheric fissure, ventricles.
  csf = depth < max(0.02, 0.7 * voxel)
  csf |= (depth < 0.14) & (gyri < -1.1)
  csf |= upper & (np.abs(x) < max(0.02, 0.5 * float(g.voxel[0])))
  ventricle = rng.uniform(0.8, 1.5)
  half_width = max(0.055 * ventricle, 0.6 * float(g.voxel[0]))
  height = max(0.08 * ventricle, 0.6 * float(g.voxel[2]))
  for side in (-1, 1):
    # Horns curve down and apart towards both ends.
    bend = 0.10 - 0.25 * (y / 0.34) ** 2
    spread = side * (0.08 + 0.08 * (y / 0.34) ** 2)
    csf |= (
      ((x - spread) / half_width) ** 2
      + (y / 0.34) ** 2
      + ((z - bend) / height) ** 2
    ) < 1
  csf |= (
    (np.abs(x) < max(0.015, 0.5 * float(g.voxel[0])))
    & (np.abs(y) < 0.12)
    & (z > -0.15)
    & (z < 0.05)
  )
  tissue[csf] = CSF
  tissue[~brain] = BACKGROUND
  return tissue, brain


def _tumour(
  rng: np.random.Generator,
  g: _Geometry,
  tissue: np.ndarray,
  brain: np.ndarray,
  grade: str,
) -> dict[str, np.ndarray]:
  """Nested tumour regions: 'wt' ⊇ 'tc' ⊇ 'et' (and 'tc' minus 'et')."""
  hgg = grade == 'HGG'
  # Centre: in a hemisphere, away from the brain surface.
  inner = (g.x / 0.5) ** 2 + (g.y / 0.6) ** 2 + (g.z / 0.5) ** 2 < 1
  inner &= brain & (np.abs(g.x) > 0.1)
  candidates = np.flatnonzero(inner if inner.any() else brain)
  centre_index = np.unravel_index(
    candidates[rng.integers(candidates.size)], g.shape
  )
  centre = np.array(
    [axis.ravel()[i] for axis, i in zip(g.axes, centre_index, strict=True)],
    np.float32,
  )
  brain_count = int(brain.sum())
  wt_fraction = math.exp(rng.uniform(math.log(0.015), math.log(0.15)))
  wt_count = max(3, round(wt_fraction * brain_count))
  # Equivalent radius of the whole tumour in normalised units.
  volume = wt_count * float(np.prod(g.voxel))
  radius = (3 * volume / (4 * math.pi)) ** (1 / 3)
  rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
  stretch = rng.uniform(0.75, 1.3, 3)
  offset = rng.standard_normal(3) * 0.3 * radius

  def distance(shift):
    p = [a - (c + s) for a, c, s in zip(g.axes, centre, shift, strict=True)]
    q = [
      sum(float(rotation[i, j]) * p[j] for j in range(3)) / stretch[i]
      for i in range(3)
    ]
    return np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) / radius

  core_distance = distance(np.zeros(3))
  # Oedema is eccentric, spreads along white matter and avoids CSF.
  wt_level = distance(offset) + 0.45 * g.field(rng, 0.5 * radius)
  wt_level += np.where(tissue == CSF, 1.5, 0.0) + np.where(
    tissue == GREY_MATTER, 0.3, 0.0
  )
  wt = _largest_component(_lowest(wt_level, brain, wt_count))
  wt_count = int(wt.sum())
  core_fraction = rng.uniform(0.25, 0.55) if hgg else rng.uniform(0.3, 0.8)
  tc_level = core_distance + 0.25 * g.field(rng, 0.4 * radius)
  # HGG cores need room for a necrotic centre and a rim.
  tc_count = _clip_count(core_fraction * wt_count, wt_count, 2 if hgg else 1)
  tc = _lowest(tc_level, wt, tc_count)
  tc_count = int(tc.sum())
  if hgg:
    # Enhancing rim around an irregular necrotic centre.
    necrotic_fraction = rng.uniform(0.2, 0.5)
    nec_level = core_distance + 0.3 * g.field(rng, 0.3 * radius)
    necrosis = _lowest(
      nec_level, tc, _clip_count(necrotic_fraction * tc_count, tc_count)
    )
    et = tc & ~necrosis
  elif rng.random() < 0.35:
    # A few LGG-like cases show a small enhancing patch.
    patch = g.field(rng, 0.3 * radius)
    count = _clip_count(rng.uniform(0.02, 0.08) * tc_count, tc_count)
    et = _lowest(patch, tc, count) if tc_count > 1 else np.zeros_like(tc)
  else:
    et = np.zeros_like(tc)
  return {'wt': wt, 'tc': tc, 'et': et}


def _paint_tumour(
  tissue: np.ndarray, regions: dict[str, np.ndarray], grade: str
) -> np.ndarray:
  tissue = tissue.copy()
  tissue[regions['wt']] = EDEMA
  tissue[regions['tc']] = NECROSIS if grade == 'HGG' else NON_ENHANCING
  tissue[regions['et']] = ENHANCING
  return tissue


def _render(
  rng: np.random.Generator,
  g: _Geometry,
  tissue: np.ndarray,
  brain: np.ndarray,
  profile: ScannerProfile,
) -> np.ndarray:
  """Scanner images (int16 `[D, H, W, 4]`) of a tissue map."""
  contrast = _TISSUE_CONTRAST ** np.array(profile.contrast, np.float32)
  # Small case-to-case variation of tissue properties.
  contrast = contrast * (1 + 0.03 * rng.standard_normal(contrast.shape)).astype(
    np.float32
  )
  relative = contrast[tissue]
  for channel in range(relative.shape[-1]):
    relative[..., channel] = ndimage.gaussian_filter(
      relative[..., channel], profile.blur, truncate=3.0
    )
  texture = 1 + 0.03 * g.field(rng, 0.06)
  tumour = tissue >= EDEMA
  texture[tumour] += 0.08 * g.field(rng, 0.1)[tumour]
  scale = np.array(profile.intensity_scale, np.float32)
  images = np.empty((*g.shape, 4), np.int16)
  for channel in range(4):
    bias = np.exp(profile.bias_strength * g.field(rng, 0.7))
    signal = scale[channel] * bias * texture * relative[..., channel]
    sigma = profile.noise_level * scale[channel]
    real = signal + sigma * rng.standard_normal(g.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(g.shape, dtype=np.float32)
    magnitude = np.sqrt(real**2 + imaginary**2)
    # Skull-stripped: exactly 0 outside the brain, at least 1 inside.
    values = np.clip(np.rint(magnitude), 1, _INT16_MAX)
    images[..., channel] = np.where(brain, values, 0)
  return images


def _labels(tissue: np.ndarray, layout: layouts.Layout) -> np.ndarray:
  labels = np.zeros(tissue.shape, np.uint8)
  labels[tissue == EDEMA] = layout.edema_label
  labels[(tissue == NECROSIS) | (tissue == NON_ENHANCING)] = (
    layout.necrotic_label
  )
  labels[tissue == ENHANCING] = layout.enhancing_label
  return labels


def _ellipsoid(g: _Geometry, centre, radii) -> np.ndarray:
  radii = [max(r, 0.6 * float(v)) for r, v in zip(radii, g.voxel, strict=True)]
  return (
    ((g.x - centre[0]) / radii[0]) ** 2
    + ((g.y - centre[1]) / radii[1]) ** 2
    + ((g.z - centre[2]) / radii[2]) ** 2
  ) < 1


def _lowest(
  level: np.ndarray, candidates: np.ndarray, count: int
) -> np.ndarray:
  """Mask of the `count` candidate voxels with the lowest `level`."""
  index = np.flatnonzero(candidates)
  count = min(max(int(count), 1), index.size)
  chosen = np.argpartition(level.ravel()[index], count - 1)[:count]
  mask = np.zeros(level.size, bool)
  mask[index[chosen]] = True
  return mask.reshape(level.shape)


def _largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest 26-connected part of `mask`, unless under 3 voxels."""
  components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
  if count <= 1:
    return mask
  sizes = np.bincount(components.ravel())[1:]
  largest = components == (int(np.argmax(sizes)) + 1)
  return largest if sizes.max() >= 3 else mask


def _clip_count(count: float, total: int, minimum: int = 1) -> int:
  """At least `minimum` voxels, and at least one left over."""
  return max(minimum, min(round(count), total - 1))


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
  return np.random.default_rng(
    np.random.SeedSequence(seed, spawn_key=(stream, index))
  )


def _as_layout(layout: str | layouts.Layout) -> layouts.Layout:
  if isinstance(layout, layouts.Layout):
    return layout
  return layouts.get_layout(layout)


def _check_counts(
  num_cases: Any, num_institutions: Any, institution_sizes: Any
) -> None:
  checks.check_positive_int('num_cases', num_cases)
  if (
    not checks.is_int(num_institutions)
    or not 1 <= num_institutions <= num_cases
  ):
    raise ValueError(
      f'num_institutions must be an integer between 1 and num_cases '
      f'({num_cases}). Found {num_institutions!r}.'
    )
  checks.check_one_of('institution_sizes', institution_sizes, INSTITUTION_SIZES)
  if institution_sizes == 'paper' and num_institutions > len(
    PAPER_INSTITUTION_SIZES
  ):
    raise ValueError(
      f'num_institutions must be at most {len(PAPER_INSTITUTION_SIZES)} '
      f"with institution_sizes='paper'. Found {num_institutions}."
    )


def _check_shape(shape: Any) -> tuple[int, int, int]:
  try:
    dims = tuple(shape)
  except TypeError:
    dims = ()
  if len(dims) != 3 or not all(checks.is_int(d) and d >= 16 for d in dims):
    raise ValueError(
      f'shape must be 3 integers, each at least 16. Found {shape!r}.'
    )
  return tuple(int(d) for d in dims)


def _check_spacing(spacing: Any) -> tuple[float, float, float]:
  try:
    values = tuple(float(s) for s in spacing)
  except (TypeError, ValueError):
    values = ()
  if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
    raise ValueError(
      f'spacing must be 3 positive finite numbers (mm). Found {spacing!r}.'
    )
  return values


def _check_grade_folders(grade_folders: Any, layout: layouts.Layout) -> bool:
  if grade_folders is None:
    return layout.name == 'brats2018'
  if not isinstance(grade_folders, bool):
    raise ValueError(
      f'grade_folders must be True, False or None. Found {grade_folders!r}.'
    )
  if grade_folders and layout.name != 'brats2018':
    raise ValueError(
      f'grade_folders must be False or None with layout {layout.name!r} '
      f'(only the 2018 layout has HGG/LGG folders). Found {grade_folders}.'
    )
  return grade_folders
