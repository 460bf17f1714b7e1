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


def test_check_positive_number():
  checks.check_positive_number('lr', 1e-4)
  for bad in (0, -1.0, float('inf'), float('nan'), True, '1'):
    with pytest.raises(
      ValueError, match=f'^lr must be a positive number. Found {bad!r}.$'
    ):
      checks.check_positive_number('lr', bad)


def test_check_non_negative_number():
  checks.check_non_negative_number('tau', 0.0)
  checks.check_non_negative_number('tau', np.float32(2.5))
  for bad in (-1e-9, float('inf'), float('nan'), False, None):
    with pytest.raises(
      ValueError, match=f'^tau must be a non-negative number. Found {bad!r}.$'
    ):
      checks.check_non_negative_number('tau', bad)


def test_check_fraction():
  for good in (1e-9, 0.5, 1, np.float64(1.0)):
    checks.check_fraction('q', good)
  for bad in (0, 1.0000001, -0.5, float('nan'), True, '0.5'):
    with pytest.raises(ValueError, match=r'^q must be in \(0, 1\]. Found '):
      checks.check_fraction('q', bad)


def test_check_probability():
  for good in (0, 0.25, 1):
    checks.check_probability('p', good)
  for bad in (-0.01, 1.01, float('nan'), None):
    with pytest.raises(
      ValueError, match=rf'^p must be in \[0, 1\]. Found {bad!r}.$'
    ):
      checks.check_probability('p', bad)


def test_check_bool():
  checks.check_bool('flag', True)
  checks.check_bool('flag', np.bool_(False))
  for bad in (0, 1, 'true', None):
    with pytest.raises(
      ValueError, match=f'^flag must be a bool. Found {bad!r}.$'
    ):
      checks.check_bool('flag', bad)


def test_check_one_of():
  checks.check_one_of('loss', 'dice', ('dice', 'dice_bce'))
  with pytest.raises(
    ValueError, match="^loss must be one of dice, dice_bce. Found 'bce'.$"
  ):
    checks.check_one_of('loss', 'bce', ('dice', 'dice_bce'))
  # True == 1, but a bool is never a choice among numbers.
  with pytest.raises(ValueError, match='Found True.'):
    checks.check_one_of('k', True, (1, 2))
