"""Property test of the reader: random headers and bytes never crash it.

Hypothesis mutates a valid NIfTI-1 file of one modality: header fields set
to random values (dimensions, data type, voxel sizes, transform codes and
parameters, scaling, offset), random bytes written anywhere in the file,
truncation, or no NIfTI at all. Every such file must either load, giving
finite float32 images on the case's grid, or raise the project's own
`BratsDataError` naming the file; any other exception, a crash or a hang
(pytest-timeout) fails the test. The reader writes nothing, and `prepare`
is checked on a few of the same files: a failure leaves no output that a
later run would trust.

The budget is bounded (`max_examples`, no per-example deadline, derandomised
so that CI sees the same examples every run) to stay within seconds.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import nibabel as nib
import numpy as np

from tff_brats.data import layouts
from tff_brats.data import prepare
from tff_brats.data import reader
from tff_brats.data.errors import BratsDataError

B18 = layouts.BRATS2018
CASE_ID = 'Brats18_FUZZ_AAA_1'
SHAPE = (5, 6, 4)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
HEADER_SIZE = 348
# Offsets of NIfTI-1 header fields (the standard's nifti1.h).
FIELDS = {
  'dim': (40, '8h'),
  'datatype': (70, 'h'),
  'bitpix': (72, 'h'),
  'pixdim': (76, '8f'),
  'vox_offset': (108, 'f'),
  'scl_slope': (112, 'f'),
  'scl_inter': (116, 'f'),
  'qform_code': (252, 'h'),
  'sform_code': (254, 'h'),
  'quatern': (256, '6f'),
  'srow': (280, '12f'),
}
SETTINGS = settings(
  max_examples=120,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _valid_file(value: float = 100.0) -> bytes:
  data = (value + np.arange(np.prod(SHAPE))).reshape(SHAPE).astype(np.int16)
  image = nib.Nifti1Image(data, AFFINE)
  image.header.set_qform(AFFINE, code=1)
  image.header.set_sform(AFFINE, code=1)
  return image.to_bytes()


VALID = _valid_file()
LABELS = nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE)
LABELS.header.set_qform(AFFINE, code=1)
LABELS.header.set_sform(AFFINE, code=1)


def _numbers(fmt: str):
  count = int(fmt[:-1] or 1)
  if fmt[-1] == 'h':
    element = st.integers(-(2**15), 2**15 - 1) | st.sampled_from(
      [0, 1, 2, 3, 4, 5, 240, 255]
    )
  else:
    element = st.floats(width=32, allow_nan=True, allow_infinity=True) | (
      st.sampled_from([0.0, 1.0, -1.0, 1e-30, 1e30, 352.0])
    )
  return st.lists(element, min_size=count, max_size=count)


_field_edit = st.sampled_from(sorted(FIELDS)).flatmap(
  lambda name: st.tuples(st.just(name), _numbers(FIELDS[name][1]))
)
_byte_edit = st.tuples(
  st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8)
)


@st.composite
def mutated_files(draw) -> bytes:
  kind = draw(st.sampled_from(['fields', 'bytes', 'truncate', 'random']))
  raw = bytearray(VALID)
  if kind == 'random':
    return draw(st.binary(max_size=600))
  if kind == 'truncate':
    return bytes(raw[: draw(st.integers(0, len(raw) - 1))])
  if kind == 'fields':
    for name, values in draw(st.lists(_field_edit, min_size=1, max_size=4)):
      offset, fmt = FIELDS[name]
      raw[offset : offset + struct.calcsize(fmt)] = struct.pack(
        '<' + fmt, *values
      )
  else:
    for offset, patch in draw(st.lists(_byte_edit, min_size=1, max_size=6)):
      raw[offset : offset + len(patch)] = patch
  return bytes(raw)


def _write_case(folder: str, t1: bytes, *, gzipped: bool) -> None:
  os.makedirs(folder)
  for channel, suffix in enumerate(B18.modalities):
    raw = t1 if suffix == 't1' else _valid_file(100.0 * channel)
    if gzipped:
      buffer = io.BytesIO()
      with gzip.GzipFile(fileobj=buffer, mode='wb', mtime=0) as f:
        f.write(raw)
      raw = buffer.getvalue()
    with open(os.path.join(folder, B18.file_name(CASE_ID, suffix)), 'wb') as f:
      f.write(raw)
  nib.save(LABELS, os.path.join(folder, B18.file_name(CASE_ID, 'seg')))


@SETTINGS
@given(t1=mutated_files(), gzipped=st.booleans())
def test_any_file_loads_or_raises_a_data_error(tmp_path_factory, t1, gzipped):
  folder = os.path.join(str(tmp_path_factory.mktemp('fuzz')), CASE_ID)
  _write_case(folder, t1, gzipped=gzipped)
  before = sorted(os.listdir(folder))

  try:
    loaded = reader.load_case(reader.case_from_directory(folder))
  except BratsDataError as e:
    # Names the file it could not read (the mutated t1, or a sibling that
    # no longer matches its grid).
    assert CASE_ID in str(e)
    assert '.nii.gz' in str(e)
  else:
    assert loaded.image.dtype == np.float32
    assert np.isfinite(loaded.image).all()
    assert loaded.image.shape == (*loaded.shape, 4)
    assert all(n > 0 for n in loaded.spacing)
    assert loaded.labels.shape == loaded.shape
  finally:
    assert sorted(os.listdir(folder)) == before
    shutil.rmtree(os.path.dirname(folder))


@settings(SETTINGS, max_examples=12)
@given(t1=mutated_files())
def test_prepare_leaves_no_trusted_output_after_a_bad_file(
  tmp_path_factory, t1
):
  root = str(tmp_path_factory.mktemp('fuzz_prepare'))
  _write_case(os.path.join(root, 'data', CASE_ID), t1, gzipped=True)
  out = os.path.join(root, 'prepared')

  try:
    prepare.prepare_dataset(
      os.path.join(root, 'data'), out, partition='uniform:1', progress=False
    )
  except BratsDataError as e:
    assert CASE_ID in str(e)
    # Nothing a later run would take for a finished preparation.
    assert not os.path.exists(os.path.join(out, 'manifest.json'))
  else:
    assert os.path.exists(os.path.join(out, 'manifest.json'))
  finally:
    shutil.rmtree(root)
