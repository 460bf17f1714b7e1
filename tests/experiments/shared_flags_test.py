"""Tests for experiments.shared_flags: one definition of every shared flag.

All binaries are imported here into one process, which absl allows only
because no flag name is defined twice (it raises DuplicateFlagError).
"""

import logging

from absl import app
from absl import flags
from absl.testing import flagsaver
import pytest

from experiments import compute_privacy
from experiments import evaluate
from experiments import export_model
from experiments import make_synthetic_brats
from experiments import predict
from experiments import prepare_data
from experiments import shared_flags
from experiments import train_centralized
from experiments import train_federated
from tff_brats import mechanisms
from tff_brats.inference import options as options_lib

FLAGS = flags.FLAGS
_BINARIES = (
  compute_privacy,
  evaluate,
  export_model,
  make_synthetic_brats,
  predict,
  prepare_data,
  train_centralized,
  train_federated,
)


def _warnings(caplog):
  return [
    r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
  ]


def _key_flags(module):
  return {f.name for f in FLAGS.get_key_flags_for_module(module.__name__)}


def test_every_shared_flag_is_read_by_two_binaries():
  shared = {f.name for f in FLAGS.get_flags_for_module(shared_flags.__name__)}
  readers = {
    name: [b.__name__ for b in _BINARIES if name in _key_flags(b)]
    for name in shared
  }
  assert {name: r for name, r in readers.items() if len(r) < 2} == {}


def test_binary_flags_are_listed_by_its_help():
  # Each binary's --help lists its own flags and the shared ones it reads.
  assert _key_flags(predict) >= {
    'model',
    'output_dir',
    'window',
    'probability_threshold',
    'window_batch_size',
    'crop_margin',
    'case_dir',
  }
  assert 'threshold' not in _key_flags(predict)
  assert 'batch_size' not in _key_flags(evaluate)
  assert _key_flags(train_federated) >= {
    'data_dir',
    'crop_size',
    'batch_size',
    *shared_flags.PRIVACY_FLAGS,
  }


def test_privacy_flags_are_every_mechanism_parameter():
  assert shared_flags.PRIVACY_FLAGS == (
    'privacy_mechanism',
    'shared_fraction',
    'clip_bound',
    'normalize_by_steps',
    'selection_epsilon',
    'release_epsilon',
    'threshold',
    'noise_multiplier',
    'l2_norm_clip',
    'sampling_probability',
    'local_steps',
  )


def test_require_names_every_missing_flag():
  with flagsaver.flagsaver(data_dir=None, output_dir=None, model='m'):
    with pytest.raises(
      app.UsageError,
      match=r'^Flag\(s\) must be given: --data_dir, --output_dir$',
    ):
      shared_flags.require('data_dir', 'model', 'output_dir')
  with flagsaver.flagsaver(data_dir='d', output_dir='o'):
    shared_flags.require('data_dir', 'output_dir')  # no error


@pytest.mark.parametrize('value, expected', [(0, 0), (7, 7), (-1, None)])
def test_seed(value, expected):
  with flagsaver.flagsaver(seed=value):
    assert shared_flags.seed() == expected


def test_privacy_parameters_are_the_mechanisms_flags(caplog):
  # The defaults of the sparse vector technique's flags.
  assert shared_flags.privacy_parameters() == {
    'shared_fraction': 0.1,
    'clip_bound': 1e-3,
    'normalize_by_steps': True,
    'selection_epsilon': None,
    'release_epsilon': None,
    'threshold': 0.0,
  }
  with flagsaver.flagsaver(
    privacy_mechanism='gaussian', noise_multiplier=0.7, l2_norm_clip=0.5
  ):
    assert shared_flags.privacy_parameters() == {
      'noise_multiplier': 0.7,
      'l2_norm_clip': 0.5,
    }
  with flagsaver.flagsaver(privacy_mechanism='none'):
    assert shared_flags.privacy_parameters() == {}
  assert _warnings(caplog) == []


def test_a_flag_of_another_mechanism_is_reported(caplog):
  # Only flags given on the command line (`present`) are reported.
  with flagsaver.as_parsed(
    privacy_mechanism='gaussian',
    noise_multiplier='0.7',
    clip_bound='0.5',
    threshold='1e-4',
  ):
    parameters = shared_flags.privacy_parameters()
  assert parameters == {'noise_multiplier': 0.7, 'l2_norm_clip': 0.1}
  assert _warnings(caplog) == [
    '--clip_bound has no effect with --privacy_mechanism=gaussian (its '
    'parameters: noise_multiplier, l2_norm_clip).',
    '--threshold has no effect with --privacy_mechanism=gaussian (its '
    'parameters: noise_multiplier, l2_norm_clip).',
  ]
  caplog.clear()
  with flagsaver.as_parsed(privacy_mechanism='none', shared_fraction='0.5'):
    assert shared_flags.privacy_parameters() == {}
  assert _warnings(caplog) == [
    '--shared_fraction has no effect with --privacy_mechanism=none (its '
    'parameters: none).'
  ]


def test_privacy_mechanism_from_flags():
  with flagsaver.flagsaver(
    shared_fraction=0.2,
    clip_bound=1e-4,
    selection_epsilon=0.5,
    release_epsilon=0.25,
    threshold=5e-4,
  ):
    mechanism = shared_flags.privacy_mechanism()
  assert mechanism == mechanisms.SparseVector(
    shared_fraction=0.2,
    clip_bound=1e-4,
    selection_epsilon=0.5,
    release_epsilon=0.25,
    threshold=5e-4,
    normalize_by_steps=True,
  )
  with flagsaver.flagsaver(privacy_mechanism='gaussian', noise_multiplier=0.7):
    assert shared_flags.privacy_mechanism() == mechanisms.Gaussian(
      noise_multiplier=0.7, l2_norm_clip=0.1
    )
  with flagsaver.flagsaver(privacy_mechanism='none'):
    assert shared_flags.privacy_mechanism() == mechanisms.NoPrivacy()


def test_privacy_mechanism_names_a_missing_parameter():
  # --selection_epsilon has no default.
  with flagsaver.flagsaver(release_epsilon=0.1):
    with pytest.raises(ValueError, match='selection_epsilon') as error:
      shared_flags.privacy_mechanism()
  assert 'None' in str(error.value)


@pytest.mark.parametrize(
  'value, expected', [(None, None), ([16], 16), ([8, 8, 4], (8, 8, 4))]
)
def test_window(value, expected):
  with flagsaver.flagsaver(window=value):
    assert shared_flags.window() == expected


def test_inference_options():
  assert shared_flags.inference_options() == options_lib.InferenceOptions()
  with flagsaver.flagsaver(
    window=[16],
    overlap=0.25,
    blending='constant',
    sigma_scale=0.25,
    probability_threshold=0.4,
    window_batch_size=2,
  ):
    options = shared_flags.inference_options(
      output_layout='brats2023', crop_margin=3
    )
  assert options == options_lib.InferenceOptions(
    window=(16, 16, 16),
    overlap=0.25,
    blending='constant',
    sigma_scale=0.25,
    threshold=0.4,
    batch_size=2,
    output_layout='brats2023',
    crop_margin=3,
  )
  with flagsaver.flagsaver(probability_threshold=1.5):
    with pytest.raises(ValueError, match='Found 1.5'):
      shared_flags.inference_options()


def test_int_list_flags_parse_from_strings():
  with flagsaver.as_parsed(window='8,8,4', crop_size='16,16,16'):
    assert shared_flags.WINDOW.value == [8, 8, 4]
    assert shared_flags.CROP_SIZE.value == [16, 16, 16]
  with pytest.raises(flags.IllegalFlagValueError, match="Found '8,x'"):
    with flagsaver.as_parsed(window='8,x'):
      pass
