"""Tests for tff_brats.training.federated_config."""

import re

import pytest

from tff_brats import mechanisms
from tff_brats.aggregators import private_sharing
from tff_brats.aggregators import weights_dropping
from tff_brats.training import federated_config

_SVT = mechanisms.SparseVector(
  shared_fraction=0.1,
  clip_bound=1e-3,
  selection_epsilon=1.0,
  release_epsilon=1.0,
)


def _config(**overrides):
  kwargs = dict(data_dir='/data', mechanism=_SVT, crop_size=(16, 16, 16))
  kwargs.update(overrides)
  return federated_config.FederatedConfig(**kwargs)


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'total_rounds': 0}, 'total_rounds must be a positive integer. Found 0.'),
    (
      {'mechanism': 'sparse_vector'},
      'mechanism must be a tff_brats.mechanisms privacy mechanism. Found '
      "'sparse_vector'.",
    ),
    ({'delta': 1.5}, 'delta must be in [0, 1). Found 1.5.'),
    (
      {'target_epsilon': -1.0},
      'target_epsilon must be a positive number. Found -1.0.',
    ),
    (
      {'server_optimizer': 'rmsprop'},
      "server_optimizer must be one of sgd, adam. Found 'rmsprop'.",
    ),
    (
      {'server_learning_rate': 0.0},
      'server_learning_rate must be a positive number. Found 0.0.',
    ),
    ({'crop_size': (16, 16, 12)}, 'crop_size'),
    (
      {'eval_window': (16, 16)},
      'eval_window must be 3 positive multiples of 8. Found (16, 16).',
    ),
    (
      {'noise_seed': -1},
      'noise_seed must be a non-negative integer. Found -1.',
    ),
    ({'diagnostics': 'yes'}, "diagnostics must be a bool. Found 'yes'."),
    (
      {'clients_per_round': 0},
      'clients_per_round must be a positive integer. Found 0.',
    ),
    ({'loss': 'bce'}, 'loss must be one of'),
  ],
)
def test_validation(overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    _config(**overrides)


def test_hparams_hold_the_mechanism_with_its_name():
  hparams = _config().to_json()
  assert hparams['privacy_mechanism'] == {
    'name': 'sparse_vector',
    'shared_fraction': 0.1,
    'clip_bound': 1e-3,
    'selection_epsilon': 1.0,
    'release_epsilon': 1.0,
    'threshold': 0.0,
    'normalize_by_steps': True,
  }
  assert 'mechanism' not in hparams
  assert hparams['crop_size'] == (16, 16, 16)
  assert hparams['loss'] == 'dice_bce'


def test_window_defaults_to_the_crop():
  assert _config().window == (16, 16, 16)
  assert _config(eval_window=(24, 24, 24)).window == (24, 24, 24)


def test_model_aggregator_comes_from_the_mechanism():
  factory = _config(noise_seed=5, diagnostics=True).model_aggregator(3)
  assert isinstance(factory, private_sharing.PrivateSharingFactory)
  assert factory.mechanism is _SVT
  gaussian = _config(mechanism=mechanisms.Gaussian(1.0, 0.1))
  assert isinstance(
    gaussian.model_aggregator(3), weights_dropping.WeightsDroppingFactory
  )
  with pytest.raises(
    ValueError, match='noise_seed must be None for the gaussian'
  ):
    _config(
      mechanism=mechanisms.Gaussian(1.0, 0.1), noise_seed=1
    ).model_aggregator(3)


def test_client_config():
  client = _config(client_epochs_per_round=2, init_filters=8).client_config()
  assert client.model_config == {
    'init_filters': 8,
    'blocks_down': (1, 2, 2, 4),
    'blocks_up': (1, 1, 1),
  }
  shallow = _config(blocks_down=[1, 1], blocks_up=[2]).client_config()
  assert shallow.model_config['blocks_down'] == (1, 1)
  assert shallow.model_config['blocks_up'] == (2,)
  assert (
    shallow.build_model().count_params() < client.build_model().count_params()
  )
  assert client.client_epochs_per_round == 2
  assert client.crop_size == (16, 16, 16)


@pytest.mark.parametrize(
  'blocks_down, blocks_up, message',
  [
    ((), (), 'blocks_down must be a non-empty'),
    ((1, 1), (), 'blocks_up must have one entry fewer'),
    ((1, -1), (1,), 'blocks_down must be a sequence of non-negative'),
  ],
)
def test_bad_architecture(blocks_down, blocks_up, message):
  with pytest.raises(ValueError, match=message):
    _config(blocks_down=blocks_down, blocks_up=blocks_up)


def test_a_fixed_noise_seed_records_no_guarantee():
  config = _config(noise_seed=5)
  record = config.round_record()
  assert not record.has_guarantee
  assert record.mechanism == 'sparse_vector (no guarantee (fixed noise seed))'
  assert config.guarantee_text() == 'no guarantee (fixed noise seed)'
  assert config.caveats == (
    *_SVT.caveats,
    federated_config.FIXED_NOISE_SEED_CAVEAT,
  )
  fresh = _config()
  assert fresh.round_record() == _SVT.record()
  assert fresh.guarantee_text() == '(ε = 2, δ = 0) per round'
  assert fresh.caveats == _SVT.caveats
  # No guarantee to lose: a mechanism without one keeps its own record.
  none = _config(mechanism=mechanisms.NoPrivacy(), noise_seed=5)
  assert none.round_record() == mechanisms.NoPrivacy().record()


def test_a_budget_needs_fresh_noise():
  with pytest.raises(
    ValueError,
    match=re.escape(
      'target_epsilon must be None with a fixed noise_seed (predictable '
      'noise has no guarantee to budget). Found target_epsilon=5.0, '
      'noise_seed=1.'
    ),
  ):
    _config(target_epsilon=5.0, noise_seed=1)
