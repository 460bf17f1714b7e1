"""Tests for tff_brats.utils.checks."""

import numpy as np
import pytest

from tff_brats.utils import checks


@pytest.mark.parametrize('value', [0, 7, -3, np.int64(4), np.uint8(2)])
def test_is_int_accepts_integers(value):
  assert checks.is_int(value)


@pytest.mark.parametrize('value', [True, np.bool_(False), 1.0, '3', None])
def test_is_int_rejects_others(value):
  assert not checks.is_int(value)


@pytest.mark.parametrize('value', [0, 1.5, np.float32(2.0), -7])
def test_is_number_accepts_reals(value):
  assert checks.is_number(value)


@pytest.mark.parametrize('value', [True, '1', None, 1j])
def test_is_number_rejects_others(value):
  assert not checks.is_number(value)


def test_check_positive_int():
  checks.check_positive_int('k', 1)
  with pytest.raises(
    ValueError, match='^k must be a positive integer. Found 0.$'
  ):
    checks.check_positive_int('k', 0)
  with pytest.raises(ValueError, match="Found '2'."):
    checks.check_positive_int('k', '2')


def test_check_non_negative_int():
  checks.check_non_negative_int('seed', 0)
  with pytest.raises(
    ValueError, match='^seed must be a non-negative integer. Found -1.$'
  ):
    checks.check_non_negative_int('seed', -1)
  with pytest.raises(ValueError, match='Found 1.5.'):
    checks.check_non_negative_int('seed', 1.5)
