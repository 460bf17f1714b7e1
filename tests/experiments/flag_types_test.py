"""Tests for experiments.flag_types."""

from absl import flags
import pytest

from experiments import flag_types


@pytest.fixture
def flag_values():
  values = flags.FlagValues()
  flag_types.DEFINE_int_list('sizes', [64, 96], 'Sizes.', flag_values=values)
  return values


def test_default_and_parsing(flag_values):
  flag_values(['prog'])
  assert flag_values.sizes == [64, 96]
  flag_values(['prog', '--sizes=8,16,24'])
  assert flag_values.sizes == [8, 16, 24]


def test_bad_value_names_the_flag_and_value(flag_values):
  with pytest.raises(
    flags.IllegalFlagValueError,
    match=r"flag --sizes=8,x: must be comma-separated integers. Found '8,x'.",
  ):
    flag_values(['prog', '--sizes=8,x'])


def test_serialises_as_csv(flag_values):
  flag_values(['prog', '--sizes=1,2'])
  assert flag_values['sizes'].serialize() == '--sizes=1,2'
