"""Scans written by other tools, through the reader and `prepare`.

dcm2niix, ITK/SimpleITK, FSL, FreeSurfer, 3D Slicer, MONAI and nibabel
scripts write NIfTI files that differ from the BraTS release in intensity
scaling, transform codes, orientation, voxel size, shape, compression,
dimensionality and data type. Every file here is built with nibabel in the
test. Each kind of file either loads to exactly the expected voxels (the
same anatomy stored in the BraTS orientation is the reference) or stops
with a `BratsDataError` naming the file and what is wrong.
"""

from __future__ import annotations

import logging
import os
import pathlib

import nibabel as nib
from nibabel import orientations
import numpy as np
import pytest

from tff_brats.data import layouts
from tff_brats.data import prepare
from tff_brats.data import reader
from tff_brats.data.errors import BratsDataError

B18 = layouts.BRATS2018
CASE_ID = 'Brats18_TEST_ABC_1'
SHAPE = (7, 9, 6)  # not 240×240×155, and no two axes alike
SPACING = (0.9, 1.2, 3.0)  # anisotropic
# The BraTS orientation, LPS, with the origin of BraTS files.
LPS_AFFINE = np.array(
  [
    [-SPACING[0], 0.0, 0.0, 0.0],
    [0.0, -SPACING[1], 0.0, (SHAPE[1] - 1) * SPACING[1]],
    [0.0, 0.0, SPACING[2], -10.0],
    [0.0, 0.0, 0.0, 1.0],
  ]
)


def _anatomy(channel: int) -> np.ndarray:
  """A distinct whole-number volume per modality, in the LPS grid."""
  return 50.0 * (channel + 1) + np.arange(np.prod(SHAPE)).reshape(SHAPE)


def _labels() -> np.ndarray:
  labels = np.zeros(SHAPE, np.uint8)
  labels[1:4, 2:5, 1:3] = 2
  labels[2, 3, 1] = 1
  labels[3, 4, 2] = 4
  return labels


def _stored(data: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
  """`data` (LPS grid) and `LPS_AFFINE` as a file in `axcodes` stores them."""
  transform = orientations.ornt_transform(
    orientations.axcodes2ornt(tuple('LPS')),
    orientations.axcodes2ornt(tuple(axcodes)),
  )
  stored = np.ascontiguousarray(orientations.apply_orientation(data, transform))
  affine = LPS_AFFINE @ orientations.inv_ornt_aff(transform, data.shape)
  return stored, affine


def _image(data, affine, *, qform=1, sform=1, dtype=None):
  image = nib.Nifti1Image(np.asarray(data), None)
  image.header.set_qform(affine, code=qform)
  image.header.set_sform(affine, code=sform)
  if dtype is not None:
    image.set_data_dtype(dtype)
  return image


def _write_case(parent, make_file, *, ext='.nii.gz', with_labels=True):
  """Writes the case; `make_file(suffix, lps_data)` returns a NIfTI image."""
  folder = os.path.join(str(parent), CASE_ID)
  os.makedirs(folder)
  volumes = {m: _anatomy(c) for c, m in enumerate(B18.modalities)}
  if with_labels:
    volumes[B18.label_suffix] = _labels()
  for suffix, data in volumes.items():
    nib.save(
      make_file(suffix, data),
      os.path.join(folder, B18.file_name(CASE_ID, suffix, ext)),
    )
  return folder


def _load(folder, require_label=True):
  return reader.load_case(
    reader.case_from_directory(folder, require_label=require_label),
    require_label=require_label,
  )


def _assert_is_the_reference(loaded):
  for channel in range(4):
    np.testing.assert_array_equal(loaded.image[..., channel], _anatomy(channel))
  np.testing.assert_array_equal(loaded.labels, _labels())
  assert loaded.shape == SHAPE
  np.testing.assert_allclose(loaded.spacing, SPACING, rtol=1e-6)
  np.testing.assert_allclose(loaded.affine, LPS_AFFINE, atol=1e-5)


# Orientation.


@pytest.mark.parametrize('axcodes', ['LPS', 'RAS', 'LAS', 'RPI', 'SPL', 'ASR'])
def test_every_orientation_loads_in_the_brats_orientation(tmp_path, axcodes):
  # The same anatomy stored with flipped and permuted axes (RAS is what
  # nibabel's `as_closest_canonical` and MONAI write; SPL and ASR permute
  # the axes, with anisotropic voxels, so the spacing must follow).
  def make(suffix, data):
    return _image(*_stored(data, axcodes))

  loaded = _load(_write_case(tmp_path, make))

  _assert_is_the_reference(loaded)
  assert loaded.source_axcodes == tuple(axcodes)
  assert loaded.reoriented == (axcodes != 'LPS')
  stored, _ = _stored(_labels(), axcodes)
  assert loaded.source_shape == stored.shape
  np.testing.assert_array_equal(loaded.to_source_grid(loaded.labels), stored)
  # Trailing axes follow (probabilities, regions).
  regions = loaded.to_source_grid(loaded.regions)
  assert regions.shape == (*stored.shape, 3)
  np.testing.assert_array_equal(
    regions[..., 1], stored != 0
  )  # WT is every tumour label


def test_oblique_scan_goes_to_its_closest_orientation(tmp_path):
  # An RAS scan tilted by 20° about the second axis (a typical oblique
  # acquisition), never resampled: its voxels are permuted and flipped as
  # for plain RAS, and the affine keeps the tilt.
  angle = np.deg2rad(20.0)
  rotation = np.eye(4)
  rotation[[0, 0, 2, 2], [0, 2, 0, 2]] = (
    np.cos(angle),
    np.sin(angle),
    -np.sin(angle),
    np.cos(angle),
  )

  def make(suffix, data):
    stored, affine = _stored(data, 'RAS')
    return _image(stored, rotation @ affine)

  loaded = _load(_write_case(tmp_path, make))

  for channel in range(4):
    np.testing.assert_array_equal(loaded.image[..., channel], _anatomy(channel))
  assert loaded.source_axcodes == ('R', 'A', 'S')
  np.testing.assert_allclose(loaded.affine, rotation @ LPS_AFFINE, atol=1e-5)
  assert nib.aff2axcodes(loaded.affine) == reader.TRAINING_AXCODES


def test_modalities_in_different_orientations_are_an_error(tmp_path):
  def make(suffix, data):
    return _image(*_stored(data, 'RAS' if suffix == 't2' else 'LPS'))

  folder = _write_case(tmp_path, make)

  with pytest.raises(BratsDataError) as raised:
    _load(folder)
  message = str(raised.value)
  assert f'{CASE_ID}_t2.nii.gz' in message
  assert "modality 't2' orientation must match" in message
  assert 'LPS' in message and 'RAS' in message
  assert 'never resampled' in message


def test_modalities_on_different_grids_are_an_error(tmp_path):
  # Same orientation, shifted by 2 mm: a registration problem, not ours
  # to fix silently.
  def make(suffix, data):
    affine = LPS_AFFINE.copy()
    if suffix == 'flair':
      affine[0, 3] += 2.0
    return _image(data, affine)

  with pytest.raises(BratsDataError, match=r"modality 'flair' affine must"):
    _load(_write_case(tmp_path, make))


# qform and sform.


@pytest.mark.parametrize(
  'qform, sform', [(1, 0), (0, 1), (2, 0), (0, 4)], ids=str
)
def test_qform_only_and_sform_only(tmp_path, qform, sform):
  # dcm2niix sets both; FSL and older ITK may set only one. Stored RAS, so
  # the orientation must come from whichever transform is set.
  def make(suffix, data):
    return _image(*_stored(data, 'RAS'), qform=qform, sform=sform)

  _assert_is_the_reference(_load(_write_case(tmp_path, make)))


def test_qform_and_sform_that_agree_in_orientation_use_the_sform(tmp_path):
  # A sub-voxel shift between the two (seen after FSL's registration tools):
  # nibabel and the NIfTI standard prefer the sform.
  def make(suffix, data):
    stored, affine = _stored(data, 'RAS')
    image = _image(stored, affine)
    shifted = affine.copy()
    shifted[:3, 3] += 0.4
    image.header.set_qform(shifted, code=1)
    return image

  loaded = _load(_write_case(tmp_path, make))

  _assert_is_the_reference(loaded)


def test_qform_and_sform_that_disagree_in_orientation_are_an_error(tmp_path):
  def make(suffix, data):
    stored, affine = _stored(data, 'RAS')
    image = _image(stored, affine, qform=1, sform=2)
    flipped = affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    image.header.set_qform(flipped, code=1)
    return image

  with pytest.raises(BratsDataError) as raised:
    _load(_write_case(tmp_path, make))
  message = str(raised.value)
  assert f'{CASE_ID}_t1.nii.gz' in message
  assert 'qform and sform must agree on the orientation' in message
  assert 'qform LAS (qform_code 1) and sform RAS (sform_code 2)' in message


def test_no_transform_codes_keep_the_voxels_as_stored(tmp_path, caplog):
  # Analyze-style headers (both codes 0) say nothing about orientation; the
  # voxels are used as stored, with a warning naming the file.
  def make(suffix, data):
    return _image(data, LPS_AFFINE, qform=0, sform=0)

  with caplog.at_level(logging.WARNING, logger='absl'):
    loaded = _load(_write_case(tmp_path, make))

  for channel in range(4):
    np.testing.assert_array_equal(loaded.image[..., channel], _anatomy(channel))
  assert loaded.source_axcodes is None
  assert not loaded.reoriented
  np.testing.assert_array_equal(
    loaded.to_source_grid(loaded.labels), loaded.labels
  )
  assert 'sets neither qform_code nor sform_code' in caplog.text
  assert f'{CASE_ID}_t1.nii.gz' in caplog.text


def test_a_singular_transform_is_an_error(tmp_path):
  def make(suffix, data):
    image = nib.Nifti1Image(data, None)
    singular = LPS_AFFINE.copy()
    singular[:, 1] = 0.0
    image.header.set_sform(singular, code=2)
    return image

  with pytest.raises(
    BratsDataError,
    match=r'affine \(qform/sform\) must be finite and invertible',
  ):
    _load(_write_case(tmp_path, make))


# Intensities, data types, files.


def test_scaling_is_applied_to_images_and_labels(tmp_path):
  # Stored int16 s with scl_slope 0.5 and scl_inter 10: the value is
  # 0.5 * s + 10. Labels stored as 2 × label with slope 0.5.
  def make(suffix, data):
    if suffix == B18.label_suffix:
      image = _image(2 * data.astype(np.int16), LPS_AFFINE)
      image.header.set_slope_inter(0.5, 0.0)
    else:
      image = _image(((data - 10.0) * 2).astype(np.int16), LPS_AFFINE)
      image.header.set_slope_inter(0.5, 10.0)
    return image

  _assert_is_the_reference(_load(_write_case(tmp_path, make)))


@pytest.mark.parametrize(
  'dtype', [np.uint8, np.int16, np.float32, np.float64], ids=str
)
def test_data_types(tmp_path, dtype):
  # uint8 only holds the anatomy's values below 256: scale it down.
  def make(suffix, data):
    if suffix != B18.label_suffix and dtype == np.uint8:
      data = data % 256
    return _image(data.astype(dtype), LPS_AFFINE)

  loaded = _load(_write_case(tmp_path, make))

  expected = _anatomy(2) % 256 if dtype == np.uint8 else _anatomy(2)
  np.testing.assert_array_equal(loaded.image[..., 2], expected)
  assert loaded.image.dtype == np.float32
  np.testing.assert_array_equal(loaded.labels, _labels())


@pytest.mark.parametrize('ext', ['.nii', '.nii.gz'])
def test_uncompressed_and_four_dimensional_files(tmp_path, ext):
  # A trailing singleton 4th axis (FSL and SPM write 4-D images of one
  # volume) in an uncompressed file.
  def make(suffix, data):
    stored, affine = _stored(data, 'RAS')
    return _image(stored[..., None], affine)

  loaded = _load(_write_case(tmp_path, make, ext=ext))

  _assert_is_the_reference(loaded)


def test_labels_stored_as_floats(tmp_path):
  def make(suffix, data):
    return _image(data.astype(np.float32), LPS_AFFINE)

  loaded = _load(_write_case(tmp_path, make))

  assert loaded.labels.dtype == np.uint8
  np.testing.assert_array_equal(loaded.labels, _labels())


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf], ids=str)
def test_nan_and_inf_in_an_image_are_an_error(tmp_path, bad):
  # FSL and some registration tools write NaN outside the brain; the model
  # cannot normalise it, so the reader names the file and the first voxel.
  def make(suffix, data):
    data = data.astype(np.float32)
    if suffix == 't1ce':
      data[2, 3, 4] = bad
    return _image(data, LPS_AFFINE)

  with pytest.raises(BratsDataError) as raised:
    _load(_write_case(tmp_path, make))
  message = str(raised.value)
  assert f'{CASE_ID}_t1ce.nii.gz' in message
  assert 'voxels must be finite' in message
  assert 'the first at index (2, 3, 4)' in message


# prepare: the stored case is the reference, whatever the files' orientation.


@pytest.mark.parametrize('axcodes', ['RAS', 'ASR'])
def test_prepare_stores_the_same_case_for_every_orientation(tmp_path, axcodes):
  def make_in(codes):
    return lambda suffix, data: _image(*_stored(data, codes))

  results = {}
  for codes in ('LPS', axcodes):
    data_dir = tmp_path / f'data_{codes}'
    _write_case(data_dir, make_in(codes))
    out_dir = str(tmp_path / f'prepared_{codes}')
    prepare.prepare_dataset(str(data_dir), out_dir, progress=False)
    results[codes] = out_dir

  stored = {}
  for codes, out_dir in results.items():
    shards = sorted(
      os.path.join(root, name)
      for root, _, names in os.walk(out_dir)
      for name in names
      if name.endswith('.tfrecord')
    )
    assert shards, out_dir
    stored[codes] = b''.join(pathlib.Path(path).read_bytes() for path in shards)
  assert stored['LPS'] == stored[axcodes]
