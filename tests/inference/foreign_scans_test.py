"""Prediction on scans written by other tools: the output is on their grid.

The network sees every case in the BraTS orientation (the reader's
`TRAINING_AXCODES`), whatever the files' own; `predict.segment_cases`
writes the labels back on the files' own grid, with their affine and their
qform/sform codes. The `marker_predictor` segments a voxel by its
intensity, so the expected labels are the markers on the stored grid; a
recording predictor shows what the network was given.
"""

from __future__ import annotations

import logging
import os

import nibabel as nib
from nibabel import orientations
import numpy as np
import pytest

from tests.inference import case_files
from tff_brats.data import layouts
from tff_brats.data import reader
from tff_brats.inference import predict
from tff_brats.inference import predictors

B18 = layouts.BRATS2018
CASE_ID = 'Brats18_TEST_XYZ_1'


def _stored(data: np.ndarray, axcodes: str):
  """`data` on the LPS grid of `case_files.AFFINE`, as `axcodes` stores it."""
  transform = orientations.ornt_transform(
    orientations.axcodes2ornt(tuple('LPS')),
    orientations.axcodes2ornt(tuple(axcodes)),
  )
  stored = np.ascontiguousarray(orientations.apply_orientation(data, transform))
  affine = case_files.AFFINE @ orientations.inv_ornt_aff(
    transform, data.shape[:3]
  )
  return stored, affine


def _write_case(parent, axcodes: str, *, ext='.nii.gz', four_d=False):
  """The `case_files` case stored in `axcodes`; returns the folder."""
  folder = os.path.join(str(parent), CASE_ID)
  os.makedirs(folder)
  image = case_files.make_image()
  for channel, suffix in enumerate(B18.modalities):
    data, affine = _stored(image[..., channel].astype(np.int16), axcodes)
    if four_d:
      data = data[..., None]
    nifti = nib.Nifti1Image(data, None)
    nifti.header.set_qform(affine, code=case_files.QFORM_CODE)
    nifti.header.set_sform(affine, code=case_files.SFORM_CODE)
    nifti.header.set_slope_inter(1.0, 0.0)
    nib.save(nifti, os.path.join(folder, B18.file_name(CASE_ID, suffix, ext)))
  return folder


def _recording_predictor(seen):
  def fn(batch):
    seen.append(np.array(batch))
    return (batch[..., :3] > case_files.MARKER_THRESHOLD).astype(np.float32)

  return predictors.Predictor(fn, size_multiple=1)


@pytest.mark.parametrize(
  'axcodes, ext, four_d',
  [
    ('LPS', '.nii.gz', False),
    ('RAS', '.nii.gz', False),
    ('ASR', '.nii', False),
    ('RPI', '.nii.gz', True),
  ],
)
def test_output_is_on_the_files_own_grid(tmp_path, axcodes, ext, four_d):
  folder = _write_case(tmp_path / 'in', axcodes, ext=ext, four_d=four_d)
  case = reader.case_from_directory(folder, require_label=False)
  seen = []

  (path,) = predict.segment_cases(
    _recording_predictor(seen), [case], str(tmp_path / 'out'), progress=False
  )

  written = nib.load(path)
  source = nib.load(case.image_paths[0])
  expected, _ = _stored(
    layouts.regions_to_labels(case_files.marker_regions(), B18), axcodes
  )
  assert written.shape == expected.shape
  np.testing.assert_array_equal(np.asanyarray(written.dataobj), expected)
  np.testing.assert_allclose(written.affine, source.affine)
  assert written.header['qform_code'] == case_files.QFORM_CODE
  assert written.header['sform_code'] == case_files.SFORM_CODE
  np.testing.assert_allclose(written.get_qform(), source.get_qform())
  assert written.get_data_dtype() == np.uint8
  # The network saw the case in the BraTS orientation: the same windows as
  # for the case stored in LPS.
  reference_seen = []
  lps_folder = _write_case(tmp_path / 'lps', 'LPS')
  predict.segment_cases(
    _recording_predictor(reference_seen),
    [reader.case_from_directory(lps_folder, require_label=False)],
    str(tmp_path / 'lps_out'),
    progress=False,
  )
  assert len(seen) == len(reference_seen)
  for batch, reference in zip(seen, reference_seen, strict=True):
    np.testing.assert_array_equal(batch, reference)


def test_anisotropic_voxels_are_segmented_on_their_grid_with_a_warning(
  tmp_path, caplog
):
  # case_files.AFFINE has 1 × 1.5 × 2 mm voxels: segmented on that grid
  # (the test above), and the user is told the model expects 1 mm.
  folder = _write_case(tmp_path / 'in', 'RAS')
  case = reader.case_from_directory(folder, require_label=False)

  with caplog.at_level(logging.WARNING, logger='absl'):
    predict.segment_cases(
      case_files.marker_predictor(),
      [case],
      str(tmp_path / 'out'),
      progress=False,
    )

  assert f'Case {CASE_ID} has voxels of 1 × 1.5 × 2 mm' in caplog.text
  assert 'not resampled' in caplog.text
