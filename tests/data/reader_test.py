"""Tests for tff_brats.data.reader on tiny NIfTI volumes written to disk."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import nibabel as nib
import numpy as np
import pytest

from tff_brats.data import layouts
from tff_brats.data import reader
from tff_brats.data.errors import BratsDataError

SHAPE = (6, 7, 8)
SPACING = (1.0, 1.5, 2.0)
# The BraTS orientation (LPS), which the reader keeps as stored.
AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
B18 = layouts.BRATS2018
B23 = layouts.BRATS2023
ID18 = 'Brats18_CBICA_AAA_1'
ID23 = 'BraTS-GLI-00001-000'
NOBODY = 65534


def _channel(index):
  """A distinct, recognisable volume per modality."""
  return (100.0 * (index + 1) + np.arange(np.prod(SHAPE))).reshape(SHAPE)


def _label_map(layout):
  """Background plus one voxel of each tumour label."""
  labels = np.zeros(SHAPE, np.uint8)
  labels[0, 0, 0] = layout.necrotic_label
  labels[1, 2, 3] = layout.edema_label
  labels[5, 6, 7] = layout.enhancing_label
  return labels


def _write(path, data, affine=AFFINE):
  nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
  return str(path)


def _make_case(
  parent,
  case_id=ID18,
  layout=B18,
  *,
  ext='.nii.gz',
  skip=(),
  volumes=None,
  affines=None,
):
  """Writes a case folder; `volumes`/`affines` override files by suffix."""
  volumes = volumes or {}
  affines = affines or {}
  folder = pathlib.Path(parent) / case_id
  folder.mkdir(parents=True)
  defaults = {s: _channel(i) for i, s in enumerate(layout.modalities)}
  defaults[layout.label_suffix] = _label_map(layout)
  for suffix, data in defaults.items():
    if suffix not in skip:
      _write(
        folder / layout.file_name(case_id, suffix, ext),
        volumes.get(suffix, data),
        affines.get(suffix, AFFINE),
      )
  return folder


def _path(folder, suffix, layout=B18, ext='.nii.gz'):
  folder = pathlib.Path(folder)
  return str(folder / layout.file_name(folder.name, suffix, ext))


def _load_dir(folder, **kwargs):
  return reader.load_case(reader.case_from_directory(folder), **kwargs)


def _match(*parts):
  """A regex requiring every part, literally and in order."""
  return '.*'.join(re.escape(str(p)) for p in parts)


# Discovery.


def test_discover_brats2018_under_hgg_and_lgg(tmp_path):
  _make_case(tmp_path / 'HGG', 'Brats18_TCIA01_B_1')
  _make_case(tmp_path / 'LGG', 'Brats18_2013_A_1')
  _make_case(tmp_path / 'HGG', 'Brats18_CBICA_C_1')

  cases = reader.discover_cases(tmp_path)

  assert [c.case_id for c in cases] == [
    'Brats18_2013_A_1',
    'Brats18_CBICA_C_1',
    'Brats18_TCIA01_B_1',
  ]
  assert [c.grade for c in cases] == ['LGG', 'HGG', 'HGG']
  first = cases[0]
  assert first.layout is B18
  folder = tmp_path / 'LGG' / 'Brats18_2013_A_1'
  assert first.image_paths == tuple(
    _path(folder, s) for s in ('t1', 't1ce', 't2', 'flair')
  )
  assert first.label_path == _path(folder, 'seg')
  assert all(os.path.isabs(p) for p in first.image_paths)


def test_discover_brats2023_flat(tmp_path):
  _make_case(tmp_path, 'BraTS-GLI-00002-000', B23)
  _make_case(tmp_path, ID23, B23)

  cases = reader.discover_cases(str(tmp_path), layout='brats2023')

  assert [c.case_id for c in cases] == [ID23, 'BraTS-GLI-00002-000']
  assert cases[0].layout is B23
  assert cases[0].grade is None
  assert cases[0].image_paths[3] == _path(tmp_path / ID23, 't2f', B23)


def test_discover_mixed_layouts_detected_per_case(tmp_path):
  _make_case(tmp_path / 'old', ID18, B18, ext='.nii')
  _make_case(tmp_path / 'new', ID23, B23)

  cases = reader.discover_cases(tmp_path)

  assert [(c.case_id, c.layout.name) for c in cases] == [
    (ID23, 'brats2023'),
    (ID18, 'brats2018'),
  ]
  assert cases[1].image_paths[0].endswith(f'{ID18}_t1.nii')


def test_discover_data_dir_that_is_a_case_folder(tmp_path):
  folder = _make_case(tmp_path, ID18)

  (case,) = reader.discover_cases(folder)

  assert case.case_id == ID18


def test_discover_searches_two_levels_only(tmp_path):
  _make_case(tmp_path / 'site_a' / 'batch_1', 'Brats18_X_1')
  _make_case(tmp_path / 'site_a' / 'batch_1' / 'deeper', 'Brats18_Y_1')

  cases = reader.discover_cases(tmp_path / 'site_a')
  assert [c.case_id for c in cases] == ['Brats18_X_1']

  with pytest.raises(BratsDataError, match='Found no case folder'):
    reader.discover_cases(tmp_path)


def test_discover_without_labels(tmp_path):
  _make_case(tmp_path, ID18, skip=('seg',))

  with pytest.raises(
    BratsDataError,
    match=_match(ID18, _path(tmp_path / ID18, 'seg'), "'seg' must be present"),
  ):
    reader.discover_cases(tmp_path)
  (case,) = reader.discover_cases(tmp_path, require_label=False)

  assert case.label_path is None


def test_discover_rejects_unknown_layout(tmp_path):
  with pytest.raises(ValueError, match=r"layout must be one of .*'brats2019'"):
    reader.discover_cases(tmp_path, layout='brats2019')


def test_case_from_directory(tmp_path):
  folder = _make_case(tmp_path / 'LGG', ID18)

  case = reader.case_from_directory(folder, layout='brats2018')

  assert case == reader.Case(
    case_id=ID18,
    layout=B18,
    image_paths=tuple(_path(folder, s) for s in B18.modalities),
    label_path=_path(folder, 'seg'),
    grade='LGG',
  )


def test_case_from_directory_not_a_case_folder(tmp_path):
  (tmp_path / 'Brats18_X_1').mkdir()
  _write(tmp_path / 'Brats18_X_1' / 'scan_T1.nii.gz', _channel(0))

  with pytest.raises(
    BratsDataError,
    match=_match(
      "case 'Brats18_X_1'", 'must be a BraTS case folder', 'scan_T1'
    ),
  ):
    reader.case_from_directory(tmp_path / 'Brats18_X_1')


def test_case_from_files_sequence_infers_case_id_and_layout(tmp_path):
  folder = _make_case(tmp_path / 'HGG', ID18)
  paths = [_path(folder, s) for s in B18.modalities]

  case = reader.case_from_files(paths, _path(folder, 'seg'))

  assert case == reader.case_from_directory(folder)
  assert case.grade == 'HGG'


def test_case_from_files_mapping(tmp_path):
  folder = _make_case(tmp_path, ID23, B23)
  mapping = {s: _path(folder, s, B23) for s in reversed(B23.modalities)}

  case = reader.case_from_files(mapping)

  assert case.case_id == ID23
  assert case.layout is B23
  assert case.image_paths == tuple(
    _path(folder, s, B23) for s in B23.modalities
  )
  assert case.label_path is None


def test_case_from_files_free_names_with_layout_and_case_id(tmp_path):
  paths = [_write(tmp_path / f'scan{i}.nii.gz', _channel(i)) for i in range(4)]
  label = _write(tmp_path / 'mask.nii.gz', _label_map(B18))

  case = reader.case_from_files(
    paths, label, case_id='patient_7', layout='brats2018'
  )
  loaded = reader.load_case(case)

  assert case.case_id == 'patient_7'
  np.testing.assert_array_equal(loaded.image[..., 2], _channel(2))

  with pytest.raises(
    BratsDataError, match=_match("['scan0.nii.gz'", 'pass layout=')
  ):
    reader.case_from_files(paths)
  with pytest.raises(
    BratsDataError, match=_match('scan0.nii.gz', 'pass case_id=')
  ):
    reader.case_from_files(paths, layout='brats2018')


def test_case_from_files_rejects_wrong_order(tmp_path):
  folder = _make_case(tmp_path, ID18)
  paths = [_path(folder, s) for s in ('t2', 't1', 't1ce', 'flair')]

  with pytest.raises(
    BratsDataError,
    match=_match(paths[0], "image_paths[0] must be the 't1' file", "'t2'"),
  ):
    reader.case_from_files(paths)


def test_case_from_files_rejects_missing_file(tmp_path):
  folder = _make_case(tmp_path, ID18, skip=('flair',))
  paths = [_path(folder, s) for s in B18.modalities]

  with pytest.raises(
    BratsDataError,
    match=_match(ID18, paths[3], "modality 'flair' file must exist"),
  ):
    reader.case_from_files(paths)


def test_case_from_files_rejects_mismatched_case_ids(tmp_path):
  folder = _make_case(tmp_path, ID18)
  paths = [_path(folder, s) for s in B18.modalities]
  other = _make_case(tmp_path, 'Brats18_OTHER_1')

  with pytest.raises(
    BratsDataError, match=_match('share a case id', 'Brats18_OTHER_1', ID18)
  ):
    reader.case_from_files(paths, _path(other, 'seg'))


# Discovery errors.


def test_discover_missing_data_dir(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(
    BratsDataError, match=_match('data_dir must be', missing, 'does not exist')
  ):
    reader.discover_cases(missing)


def test_discover_data_dir_is_a_file(tmp_path):
  path = tmp_path / 'cases.txt'
  path.write_text('x')
  with pytest.raises(
    BratsDataError, match=_match(path, 'which is not a directory')
  ):
    reader.discover_cases(path)


def test_discover_empty_folder(tmp_path):
  with pytest.raises(
    BratsDataError,
    match=_match(
      '<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz',
      '<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz',
      f'no case folder in {str(tmp_path)!r} and no NIfTI file',
    ),
  ):
    reader.discover_cases(tmp_path)


def test_discover_folder_of_misnamed_files(tmp_path):
  flat = tmp_path / 'flat'
  flat.mkdir()
  for suffix in B18.modalities:
    _write(flat / B18.file_name(ID18, suffix), _channel(0))

  with pytest.raises(
    BratsDataError,
    match=_match(
      '4 NIfTI file(s) whose names do not follow',
      str(flat / f'{ID18}_flair.nii.gz'),
      "'flat_<suffix>.nii.gz'",
    ),
  ):
    reader.discover_cases(tmp_path)


def test_discover_duplicate_case_ids(tmp_path):
  _make_case(tmp_path / 'HGG', ID18)
  _make_case(tmp_path / 'LGG', ID18)

  with pytest.raises(
    BratsDataError,
    match=_match(
      ID18, 'must be unique', tmp_path / 'HGG' / ID18, tmp_path / 'LGG' / ID18
    ),
  ):
    reader.discover_cases(tmp_path)


@pytest.mark.parametrize(
  ('layout', 'case_id', 'missing'),
  [(B18, ID18, 't1ce'), (B23, ID23, 't2w'), (B23, ID23, 'seg')],
)
def test_discover_missing_file(tmp_path, layout, case_id, missing):
  _make_case(tmp_path, case_id, layout, skip=(missing,))
  expected = _path(tmp_path / case_id, missing, layout)

  with pytest.raises(
    BratsDataError,
    match=_match(case_id, expected, f'{missing!r} must be present'),
  ):
    reader.discover_cases(tmp_path)


def test_discover_missing_file_expects_the_case_extension(tmp_path):
  _make_case(tmp_path, ID18, ext='.nii', skip=('t2',))

  with pytest.raises(
    BratsDataError, match=_match(_path(tmp_path / ID18, 't2', ext='.nii'))
  ):
    reader.discover_cases(tmp_path)


def test_discover_file_in_two_formats(tmp_path):
  folder = _make_case(tmp_path, ID18)
  _write(_path(folder, 't2', ext='.nii'), _channel(2))

  with pytest.raises(
    BratsDataError,
    match=_match(
      ID18, "'t2' must have one file", f"'{ID18}_t2.nii.gz', '{ID18}_t2.nii'"
    ),
  ):
    reader.discover_cases(tmp_path)


def test_discover_folder_mixing_layouts(tmp_path):
  folder = _make_case(tmp_path, ID18)
  _write(folder / B23.file_name(ID18, 't1n'), _channel(0))

  with pytest.raises(
    BratsDataError,
    match=_match(ID18, 'one layout', 'BraTS 2018-2021', 'BraTS 2023+'),
  ):
    reader.discover_cases(tmp_path)


def test_discover_case_in_other_layout_than_forced(tmp_path):
  _make_case(tmp_path, ID23, B23)

  with pytest.raises(
    BratsDataError,
    match=_match(ID23, "layout='brats2018'", f'{ID23}-t1n.nii.gz'),
  ):
    reader.discover_cases(tmp_path, layout='brats2018')


# Loading.


@pytest.mark.parametrize(('layout', 'case_id'), [(B18, ID18), (B23, ID23)])
def test_load_case_round_trip(tmp_path, layout, case_id):
  folder = _make_case(tmp_path, case_id, layout)

  loaded = _load_dir(folder)

  assert loaded.image.dtype == np.float32
  assert loaded.image.shape == (*SHAPE, 4)
  for channel in range(4):
    np.testing.assert_array_equal(loaded.image[..., channel], _channel(channel))
  assert loaded.spacing == SPACING
  np.testing.assert_array_equal(loaded.affine, AFFINE)
  assert loaded.affine.dtype == np.float64
  assert loaded.shape == SHAPE
  assert loaded.labels.dtype == np.uint8
  np.testing.assert_array_equal(loaded.labels, _label_map(layout))
  # Hand-computed (TC, WT, ET): necrotic is TC and WT, oedema WT only,
  # enhancing all three; the background is none.
  expected = np.zeros((*SHAPE, 3), bool)
  expected[0, 0, 0] = (True, True, False)
  expected[1, 2, 3] = (False, True, False)
  expected[5, 6, 7] = (True, True, True)
  assert loaded.regions.dtype == bool
  np.testing.assert_array_equal(loaded.regions, expected)


def test_load_case_int16_images_float_labels_and_singleton_axes(tmp_path):
  volumes = {
    't1': _channel(0).astype(np.int16)[..., None],
    'seg': _label_map(B18).astype(np.float32)[..., None, None],
  }
  folder = _make_case(tmp_path, ID18, volumes=volumes)

  loaded = _load_dir(folder)

  assert loaded.shape == SHAPE
  np.testing.assert_array_equal(loaded.image[..., 0], _channel(0))
  assert loaded.labels.dtype == np.uint8
  np.testing.assert_array_equal(loaded.labels, _label_map(B18))


def test_load_case_without_label(tmp_path):
  folder = _make_case(tmp_path, ID18, skip=('seg',))
  case = reader.case_from_directory(folder, require_label=False)

  with pytest.raises(
    BratsDataError, match=_match(ID18, 'segmentation must be present')
  ):
    reader.load_case(case)
  loaded = reader.load_case(case, require_label=False)

  assert loaded.labels is None
  assert loaded.regions is None
  np.testing.assert_array_equal(loaded.image[..., 3], _channel(3))


def test_load_case_accepts_affine_within_tolerance(tmp_path):
  shifted = AFFINE.copy()
  shifted[0, 3] += 5e-4
  folder = _make_case(tmp_path, ID18, affines={'t2': shifted})

  assert _load_dir(folder).shape == SHAPE
  with pytest.raises(BratsDataError, match=_match('difference of 0.0005')):
    _load_dir(folder, affine_atol=1e-4)


def test_file_sha256(tmp_path):
  payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
  path = tmp_path / 'blob.bin'
  path.write_bytes(payload)

  assert reader.file_sha256(path) == hashlib.sha256(payload).hexdigest()
  with pytest.raises(
    BratsDataError, match=_match(tmp_path / 'nope', 'must exist')
  ):
    reader.file_sha256(tmp_path / 'nope')


# Loading errors: each names the case, the file and the offending value.


def _gzipped_random_volume(tmp_path):
  noise = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
  return pathlib.Path(_write(tmp_path / 'noise.nii.gz', noise)).read_bytes()


def test_load_truncated_gzip(tmp_path):
  folder = _make_case(tmp_path, ID18)
  raw = _gzipped_random_volume(tmp_path)
  bad = _path(folder, 't2')
  pathlib.Path(bad).write_bytes(raw[: len(raw) - 200])

  with pytest.raises(
    BratsDataError,
    match=_match(ID18, bad, 'truncated or corrupt gzip', 'EOFError'),
  ):
    _load_dir(folder)


def test_load_corrupt_gzip(tmp_path):
  # Flipped bits in the middle of the deflate stream: a lazy nibabel read
  # returns garbage for this file without an error; the CRC catches it.
  folder = _make_case(tmp_path, ID18)
  raw = bytearray(_gzipped_random_volume(tmp_path))
  middle = len(raw) // 2
  raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
  bad = _path(folder, 'flair')
  pathlib.Path(bad).write_bytes(bytes(raw))

  with pytest.raises(
    BratsDataError, match=_match(ID18, bad, 'truncated or corrupt gzip')
  ):
    _load_dir(folder)


def test_load_truncated_uncompressed(tmp_path):
  folder = _make_case(tmp_path, ID18, ext='.nii')
  bad = _path(folder, 't1ce', ext='.nii')
  raw = pathlib.Path(bad).read_bytes()
  pathlib.Path(bad).write_bytes(raw[:600])

  with pytest.raises(
    BratsDataError,
    match=_match(ID18, bad, 'truncated file', 'Expected 2688 bytes, got 248'),
  ):
    _load_dir(folder)


@pytest.mark.parametrize(
  ('ext', 'content', 'found'),
  [
    (
      '.nii.gz',
      b'not an image\n',
      "not gzip-compressed and starts with b'not an i'",
    ),
    (
      '.nii.gz',
      gzip.compress(b'not an image\n' * 40),
      "data starting with b'not an i'",
    ),
    ('.nii', b'not an image\n' * 40, "data starting with b'not an i'"),
    ('.nii', b'', 'an empty file'),
  ],
  # Named ids: the gzip bytes hold the time of compression, and pytest-xdist
  # refuses to run when its workers collect different test ids.
  ids=['text_as_gz', 'gzipped_text', 'text_as_nii', 'empty'],
)
def test_load_file_that_is_not_nifti(tmp_path, ext, content, found):
  folder = _make_case(tmp_path, ID18, ext=ext)
  bad = _path(folder, 't1', ext=ext)
  pathlib.Path(bad).write_bytes(content)

  with pytest.raises(
    BratsDataError, match=_match(ID18, bad, 'must be a NIfTI', found)
  ):
    _load_dir(folder)


def test_load_invalid_nifti_header(tmp_path):
  folder = _make_case(tmp_path, ID18)
  bad = _path(folder, 't2')
  raw = bytearray(gzip.decompress(pathlib.Path(bad).read_bytes()))
  raw[344:348] = b'xxxx'  # The NIfTI magic 'n+1\0'.
  pathlib.Path(bad).write_bytes(gzip.compress(bytes(raw)))

  with pytest.raises(
    BratsDataError, match=_match(ID18, bad, 'invalid header', "'xxxx'")
  ):
    _load_dir(folder)


@pytest.mark.parametrize('suffix', ['t1', 'seg'])
def test_load_non_3d_volume(tmp_path, suffix):
  volume = np.zeros((*SHAPE, 2), np.float32)
  folder = _make_case(tmp_path, ID18, volumes={suffix: volume})

  with pytest.raises(
    BratsDataError,
    match=_match(ID18, _path(folder, suffix), '3-D', '(6, 7, 8, 2)'),
  ):
    _load_dir(folder)


@pytest.mark.parametrize('suffix', ['t2', 'seg'])
def test_load_shape_mismatch(tmp_path, suffix):
  volume = np.zeros((6, 7, 9), np.uint8)
  folder = _make_case(tmp_path, ID18, volumes={suffix: volume})

  with pytest.raises(
    BratsDataError,
    match=_match(
      ID18, _path(folder, suffix), 'shape must match', '(6, 7, 8)', '(6, 7, 9)'
    ),
  ):
    _load_dir(folder)


@pytest.mark.parametrize('suffix', ['t1ce', 'seg'])
def test_load_affine_mismatch(tmp_path, suffix):
  shifted = AFFINE.copy()
  shifted[1, 3] = -0.25
  shifted[2, 2] = 2.5
  folder = _make_case(tmp_path, ID18, affines={suffix: shifted})

  with pytest.raises(
    BratsDataError,
    match=_match(
      ID18, _path(folder, suffix), 'affine must match', 'difference of 0.5.'
    ),
  ):
    _load_dir(folder)


def test_load_non_finite_image(tmp_path):
  volume = _channel(3)
  volume[1, 2, 3] = np.nan
  volume[4, 5, 6] = np.inf
  volume[5, 0, 0] = np.nan
  folder = _make_case(tmp_path, ID18, volumes={'flair': volume})

  with pytest.raises(
    BratsDataError,
    match=_match(
      ID18, _path(folder, 'flair'), '2 NaN and 1 Inf', 'index (1, 2, 3)'
    ),
  ):
    _load_dir(folder)


@pytest.mark.parametrize(
  ('layout', 'case_id', 'bad_value', 'allowed', 'hint'),
  [
    (B18, ID18, 3, '[0, 1, 2, 4]', 'follow the BraTS 2023+ convention'),
    (B23, ID23, 4, '[0, 1, 2, 3]', 'follow the BraTS 2018-2021 convention'),
  ],
)
def test_load_label_outside_convention(
  tmp_path, layout, case_id, bad_value, allowed, hint
):
  labels = _label_map(layout)
  labels[2, :, :] = bad_value  # 7 * 8 = 56 voxels.
  folder = _make_case(tmp_path, case_id, layout, volumes={'seg': labels})

  with pytest.raises(
    BratsDataError,
    match=_match(
      case_id,
      _path(folder, 'seg', layout),
      f'label must be one of {allowed} ({layout.description})',
      f'Found {bad_value} in 56 voxel(s).',
      hint,
    ),
  ):
    _load_dir(folder)


def test_load_label_values_never_mapped(tmp_path):
  labels = _label_map(B18)
  labels[3, 3, 3] = 7
  labels[3, 3, 4] = 255
  folder = _make_case(tmp_path, ID18, volumes={'seg': labels})

  with pytest.raises(
    BratsDataError, match=_match('Found 7 in 1 voxel(s), 255 in 1 voxel(s).')
  ):
    _load_dir(folder)


def test_load_non_integer_labels(tmp_path):
  labels = _label_map(B18).astype(np.float32)
  labels[2, 3, 4] = 1.5
  folder = _make_case(tmp_path, ID18, volumes={'seg': labels})

  with pytest.raises(
    BratsDataError,
    match=_match(
      ID18,
      _path(folder, 'seg'),
      'must be an integer',
      '1.5 in 1 voxel(s)',
      '(2, 3, 4)',
    ),
  ):
    _load_dir(folder)


def test_load_rejects_negative_affine_atol(tmp_path):
  folder = _make_case(tmp_path, ID18)
  with pytest.raises(
    ValueError,
    match=r'affine_atol must be a non-negative number\. Found -1\.0\.',
  ):
    _load_dir(folder, affine_atol=-1.0)


# Permissions. As root, chmod 000 does not stop reads, so the read runs in a
# child process that drops to user nobody after its imports (the venv's
# interpreter may live where nobody cannot read it).

_UNPRIVILEGED_SCRIPT = textwrap.dedent(
  """
  import json, os, sys
  from tff_brats.data import errors, reader

  mode, good, bad, nobody = sys.argv[1:]
  run = {
    'load': lambda p: reader.load_case(reader.case_from_directory(p)),
    'discover': reader.discover_cases,
  }[mode]
  run(good)  # Warms every lazy import while still privileged.
  if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(int(nobody))
    os.setuid(int(nobody))
  run(good)  # Control: the same user reads an ordinary case.
  try:
    run(bad)
    error = None
  except errors.BratsDataError as e:
    error = str(e)
  print(json.dumps({'uid': os.geteuid(), 'error': error}))
  """
)


@pytest.fixture
def shared_tmp():
  """A temporary folder user nobody can traverse (tmp_path is 0700)."""
  root = pathlib.Path(tempfile.mkdtemp(prefix='reader_test_'))
  yield root
  for folder, subdirs, _ in os.walk(root):
    for name in subdirs:
      os.chmod(os.path.join(folder, name), 0o755)
  shutil.rmtree(root)


def _run(mode, good, bad):
  # The child imports the same tff_brats as this process.
  source_root = str(pathlib.Path(reader.__file__).parents[2])
  python_path = os.environ.get('PYTHONPATH')
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(filter(None, [source_root, python_path])),
  )
  result = subprocess.run(
    [
      sys.executable,
      '-c',
      _UNPRIVILEGED_SCRIPT,
      mode,
      str(good),
      str(bad),
      str(NOBODY),
    ],
    capture_output=True,
    text=True,
    cwd='/',
    env=env,
    timeout=60,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  outcome = json.loads(result.stdout.strip().splitlines()[-1])
  assert outcome['uid'] != 0
  return outcome['error']


def _make_world_readable(root):
  for folder, _, files in os.walk(root):
    os.chmod(folder, 0o755)
    for name in files:
      os.chmod(os.path.join(folder, name), 0o644)


def test_load_unreadable_file(shared_tmp):
  good = _make_case(shared_tmp / 'good', ID18)
  bad = _make_case(shared_tmp / 'bad', ID18)
  _make_world_readable(shared_tmp)
  os.chmod(_path(bad, 't1ce'), 0)

  error = _run('load', good, bad)

  assert error is not None
  assert re.search(
    _match(ID18, _path(bad, 't1ce'), 'must be readable', 'permission denied'),
    error,
  ), error


def test_discover_unreadable_directory(shared_tmp):
  _make_case(shared_tmp / 'good' / 'HGG', ID18)
  _make_case(shared_tmp / 'bad' / 'HGG', ID18)
  _make_case(shared_tmp / 'bad' / 'LGG', 'Brats18_2013_A_1')
  _make_world_readable(shared_tmp)
  os.chmod(shared_tmp / 'bad' / 'LGG', stat.S_IXUSR)

  error = _run('discover', shared_tmp / 'good', shared_tmp / 'bad')

  assert error is not None
  assert re.search(
    _match(shared_tmp / 'bad' / 'LGG', 'must be readable', 'permission denied'),
    error,
  ), error
