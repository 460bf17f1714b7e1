"""Tests for tff_brats.data.errors."""

import pathlib

from tff_brats.data.errors import BratsDataError


def test_message_names_case_and_file():
  e = BratsDataError(
    'label must be one of [0, 1, 2, 4]. Found 3.',
    case_id='Brats18_X_1_1',
    path=pathlib.Path('/d/x_seg.nii.gz'),
  )
  assert str(e) == (
    "case 'Brats18_X_1_1', file '/d/x_seg.nii.gz': label must be one of "
    '[0, 1, 2, 4]. Found 3.'
  )
  assert e.case_id == 'Brats18_X_1_1'
  assert e.path == '/d/x_seg.nii.gz'
  assert isinstance(e, ValueError)


def test_message_without_location():
  assert str(BratsDataError('empty')) == 'empty'
  assert str(BratsDataError('bad', path='/f')) == "file '/f': bad"
