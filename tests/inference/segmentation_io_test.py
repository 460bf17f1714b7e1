"""Tests for tff_brats.inference.segmentation_io."""

from __future__ import annotations

import os
import pathlib
from unittest import mock

import nibabel as nib
import numpy as np
import pytest

from tests.inference import case_files
from tff_brats.data import layouts
from tff_brats.data import reader
from tff_brats.inference import segmentation_io

B18 = layouts.BRATS2018
B23 = layouts.BRATS2023
ID18 = 'Brats18_CBICA_AAA_1'
ID23 = 'BraTS-GLI-00001-000'


def _expected_labels(layout, shape=case_files.SHAPE):
  return layouts.regions_to_labels(case_files.marker_regions(shape), layout)


# write_segmentation.


def test_written_segmentation_keeps_the_reference_grid_and_header(tmp_path):
  folder = case_files.write_case(tmp_path, ID18)
  reference = case_files.modality_path(folder, B18, 't1')
  labels = _expected_labels(B18)
  out = str(tmp_path / 'out' / f'{ID18}.nii.gz')
  os.makedirs(os.path.dirname(out))
  assert segmentation_io.write_segmentation(labels, reference, out) == out
  written, source = nib.load(out), nib.load(reference)
  assert written.get_data_dtype() == np.uint8
  data = np.asanyarray(written.dataobj)
  assert data.dtype == np.uint8
  np.testing.assert_array_equal(data, labels)
  np.testing.assert_array_equal(written.affine, source.affine)
  np.testing.assert_array_equal(written.affine, case_files.AFFINE)
  assert int(written.header['qform_code']) == case_files.QFORM_CODE
  assert int(written.header['sform_code']) == case_files.SFORM_CODE
  np.testing.assert_allclose(written.get_qform(), source.get_qform())
  np.testing.assert_allclose(written.get_sform(), source.get_sform())
  assert written.header.get_zooms() == source.header.get_zooms()
  assert written.header.get_xyzt_units() == ('mm', 'unknown')
  assert written.header['descrip'] == source.header['descrip']
  assert os.listdir(os.path.dirname(out)) == [f'{ID18}.nii.gz']


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
  folder = case_files.write_case(tmp_path, ID18)
  reference = case_files.modality_path(folder, B18, 't1')
  out = str(tmp_path / 'seg.nii.gz')
  first = np.zeros(case_files.SHAPE, np.uint8)
  segmentation_io.write_segmentation(first, reference, out)
  before = pathlib.Path(out).read_bytes()
  second = _expected_labels(B18)
  with pytest.raises(FileExistsError, match='must not exist') as info:
    segmentation_io.write_segmentation(second, reference, out)
  assert out in str(info.value)
  assert pathlib.Path(out).read_bytes() == before
  segmentation_io.write_segmentation(second, reference, out, overwrite=True)
  np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), second)
  assert sorted(os.listdir(tmp_path)) == [ID18, 'seg.nii.gz']


def test_a_failed_write_leaves_nothing(tmp_path):
  # The file is staged by atomic.staged_file: an error while saving removes
  # the temporary file and leaves the old output as it was.
  folder = case_files.write_case(tmp_path, ID18)
  reference = case_files.modality_path(folder, B18, 't1')
  out = tmp_path / 'out'
  out.mkdir()
  path = out / 'seg.nii.gz'
  path.write_bytes(b'old')

  def failing_save(image, filename):
    pathlib.Path(filename).write_bytes(b'partial')
    raise OSError('disk full')

  with mock.patch.object(segmentation_io.nib, 'save', failing_save):
    with pytest.raises(OSError, match='disk full'):
      segmentation_io.write_segmentation(
        _expected_labels(B18), reference, str(path), overwrite=True
      )
  assert os.listdir(out) == ['seg.nii.gz']
  assert path.read_bytes() == b'old'


def test_write_uncompressed_and_bad_arguments(tmp_path):
  folder = case_files.write_case(tmp_path, ID18)
  reference = case_files.modality_path(folder, B18, 't1')
  labels = _expected_labels(B18)
  out = str(tmp_path / 'seg.nii')
  segmentation_io.write_segmentation(labels, reference, out)
  with open(out, 'rb') as f:
    assert f.read(4) == (348).to_bytes(4, 'little')  # not gzipped
  with pytest.raises(ValueError, match="out_path must end in '.nii.gz'"):
    segmentation_io.write_segmentation(
      labels, reference, str(tmp_path / 'seg.png')
    )
  with pytest.raises(
    ValueError,
    match=r'labels must have the shape .*\(20, 18, 16\). Found \(20, 18\)',
  ):
    segmentation_io.write_segmentation(
      labels[..., 0], reference, str(tmp_path / 'a.nii')
    )
  with pytest.raises(ValueError, match='labels must be integers'):
    segmentation_io.write_segmentation(
      labels.astype(np.float32), reference, str(tmp_path / 'b.nii')
    )
  with pytest.raises(ValueError, match=r'labels must be in \[0, 255\]'):
    segmentation_io.write_segmentation(
      labels.astype(np.int16) * 100, reference, str(tmp_path / 'c.nii')
    )
  (tmp_path / 'd.nii').mkdir()
  with pytest.raises(ValueError, match='out_path must be a file path'):
    segmentation_io.write_segmentation(
      labels, reference, str(tmp_path / 'd.nii'), overwrite=True
    )
  assert not any(
    os.path.exists(tmp_path / n) for n in ('a.nii', 'b.nii', 'c.nii')
  )


# Output paths.


def test_planned_outputs(tmp_path):
  case_files.write_case(tmp_path / 'data', ID18)
  case_files.write_case(tmp_path / 'data', ID23, B23)
  cases = reader.discover_cases(str(tmp_path / 'data'), require_label=False)
  out = tmp_path / 'out'
  assert segmentation_io.output_path(str(out), ID18) == str(
    out / f'{ID18}.nii.gz'
  )
  planned = segmentation_io.planned_outputs(cases, str(out), overwrite=False)
  assert planned == [str(out / f'{ID23}.nii.gz'), str(out / f'{ID18}.nii.gz')]
  assert not out.exists()  # checking creates nothing
  out.mkdir()
  (out / f'{ID18}.nii.gz').write_bytes(b'old')
  with pytest.raises(FileExistsError, match=f'{ID18}.nii.gz'):
    segmentation_io.planned_outputs(cases, str(out), overwrite=False)
  assert segmentation_io.planned_outputs(cases, str(out), True) == planned
  (tmp_path / 'file').write_text('x')
  with pytest.raises(ValueError, match='output_dir must be a folder'):
    segmentation_io.planned_outputs(cases, str(tmp_path / 'file'), True)


# Input forms.


def test_resolve_each_input_form(tmp_path):
  folder18 = case_files.write_case(tmp_path / 'data', ID18)
  folder23 = case_files.write_case(tmp_path / 'data', ID23, B23)
  (by_dir,) = segmentation_io.resolve_cases(case_dir=folder18)
  assert by_dir.case_id == ID18 and by_dir.layout is B18
  assert [
    c.case_id for c in segmentation_io.resolve_cases(data_dir=tmp_path / 'data')
  ] == [ID23, ID18]
  files = {
    m: case_files.modality_path(folder23, B23, m) for m in B23.modalities
  }
  (by_files,) = segmentation_io.resolve_cases(image_paths=files)
  assert by_files.case_id == ID23 and by_files.layout is B23
  (named,) = segmentation_io.resolve_cases(image_paths=files, case_id='mine')
  assert named.case_id == 'mine'
  assert named.image_paths == tuple(files[m] for m in B23.modalities)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({}, 'exactly one input form must be given.*Found none.'),
    (
      {'case_dir': 'a', 'data_dir': 'b'},
      'exactly one input form.*Found case_dir and data_dir.',
    ),
    (
      {'case_dir': 'a', 'image_paths': {'t1': 'x'}},
      'Found case_dir and image_paths.',
    ),
    (
      {'data_dir': 'b', 'case_id': 'c'},
      "case_id must only be given with image_paths.*'c'",
    ),
    (
      {'image_paths': {'t1': 'a', 't1ce': 'b', 'flair': 'c'}},
      r"missing \['t2'\]",
    ),
    (
      {'image_paths': {'t1': 'a', 't1c': 'b', 't2': 'c', 't2f': 'd'}},
      r'one layout.*Found t1 \(brats2018\), t1c \(brats2023\)',
    ),
  ],
)
def test_resolve_rejects_bad_forms(kwargs, message):
  with pytest.raises(ValueError, match=message):
    segmentation_io.resolve_cases(**kwargs)
