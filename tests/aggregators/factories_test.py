"""Every privacy mode as `model_aggregator` of TFF's stock FedAvg."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats.aggregators import factories
from tff_brats.aggregators import private_sharing
from tff_brats.privacy import accounting
from tff_brats.runtime import local

# Two rounds of FedAvg per mode on a real worker (~5 s each).
pytestmark = pytest.mark.slow

MODES = {
  'none': {},
  'selective_sharing': dict(shared_fraction=0.5, clip_bound=0.05),
  'sparse_vector': dict(
    shared_fraction=0.5,
    clip_bound=0.05,
    selection_epsilon=1.0,
    release_epsilon=1.0,
    threshold=0.01,
  ),
  'gaussian': dict(noise_multiplier=0.5, clients_per_round=2, clip_bound=1.0),
}


@pytest.fixture(scope='module')
def runtime(tmp_path_factory):
  with local.LocalRuntime(log_dir=str(tmp_path_factory.mktemp('rt'))) as rt:
    yield rt


def _model_fn():
  keras_model = tf.keras.Sequential(
    [
      tf.keras.layers.InputLayer(input_shape=(4,)),
      tf.keras.layers.Dense(3, activation='sigmoid'),
    ]
  )
  return tff.learning.models.from_keras_model(
    keras_model,
    loss=tf.keras.losses.BinaryCrossentropy(),
    input_spec=(
      tf.TensorSpec([None, 4], tf.float32),
      tf.TensorSpec([None, 3], tf.float32),
    ),
  )


def _client_data(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  y = (x[:, :3] > 0).astype(np.float32)
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def _run_two_rounds(aggregator, weighted=True):
  build = (
    tff.learning.algorithms.build_weighted_fed_avg
    if weighted
    else tff.learning.algorithms.build_unweighted_fed_avg
  )
  process = build(
    _model_fn,
    client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.5),
    server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0),
    model_aggregator=aggregator,
  )
  state = process.initialize()
  initial = process.get_model_weights(state).trainable
  data = [_client_data(0), _client_data(1)]
  outputs = []
  for _ in range(2):
    output = process.next(state, data)
    state = output.state
    outputs.append(output)
  final = process.get_model_weights(state).trainable
  return state, outputs, initial, final


@pytest.mark.parametrize('mode', list(MODES))
def test_two_rounds_of_weighted_fed_avg(runtime, mode):
  aggregator = factories.build_model_aggregator(mode, **MODES[mode])
  state, outputs, initial, final = _run_two_rounds(aggregator)
  changed = any(
    not np.allclose(a, b) for a, b in zip(initial, final, strict=True)
  )
  assert changed, f'{mode}: two rounds left the model unchanged'
  for weights in final:
    assert np.all(np.isfinite(weights))
  record = factories.privacy_record(state.aggregator, mode)
  if mode == 'sparse_vector':
    assert record.epsilon == pytest.approx(2.0)
    assert record.delta == 0.0
    m = outputs[-1].metrics['aggregator']['privatization']
    assert m['num_clients'] == 2
    assert m['epsilon_per_client'] == pytest.approx(2.0)
    # c = ceil(0.5 * 15 trainable values) = 8 at most per client.
    assert m['released_max'] <= 8
  elif mode == 'gaussian':
    assert record.mechanism == 'gaussian'
    assert record.has_guarantee
    # Each round is the Gaussian mechanism with z = 0.5 on the clipped sum;
    # the ledger composes it (here: one round's ε at δ = 1e-5 is finite).
    ledger = accounting.PrivacyLedger()
    ledger.record_round(0, ['a', 'b'], record)
    assert math.isfinite(ledger.epsilon('a', delta=1e-5))
  else:
    assert not record.has_guarantee
    assert math.isinf(record.epsilon)


@pytest.mark.parametrize('mode', ['none', 'selective_sharing', 'sparse_vector'])
def test_two_rounds_of_unweighted_fed_avg(runtime, mode):
  aggregator = factories.build_model_aggregator(
    mode, weighted=False, **MODES[mode]
  )
  assert isinstance(aggregator, tff.aggregators.UnweightedAggregationFactory)
  _, outputs, initial, final = _run_two_rounds(aggregator, weighted=False)
  assert any(not np.allclose(a, b) for a, b in zip(initial, final, strict=True))
  assert outputs[-1].metrics['aggregator']['privatization']['num_clients'] == 2


def test_gaussian_weighted_form_drops_the_weights(runtime):
  """Noise-free DP-FedAvg: the weighted form is the plain mean."""
  factory = factories.build_model_aggregator(
    'gaussian', noise_multiplier=0.0, clients_per_round=2, clip_bound=100.0
  )
  value_type = tff.TensorType(np.float32, [2])
  process = factory.create(value_type, tff.TensorType(np.float32))
  output = process.next(
    process.initialize(), [[1.0, 2.0], [3.0, 6.0]], [1.0, 100.0]
  )
  np.testing.assert_allclose(output.result, [2.0, 4.0], rtol=1e-6)


def test_builder_arguments():
  with pytest.raises(ValueError, match='privacy_mechanism must be one of'):
    factories.build_model_aggregator('laplace')
  with pytest.raises(ValueError, match='selection_epsilon must be given'):
    factories.build_model_aggregator('sparse_vector', release_epsilon=1.0)
  with pytest.raises(
    ValueError, match='noise_multiplier and clients_per_round'
  ):
    factories.build_model_aggregator('gaussian', clip_bound=1.0)
  svt = factories.build_model_aggregator(
    'sparse_vector', selection_epsilon=1.0, release_epsilon=0.5
  )
  assert isinstance(svt, private_sharing.PrivateSharingFactory)
  assert svt.mechanism.normalize_by_steps
  unweighted = factories.build_model_aggregator(
    'sparse_vector', weighted=False, selection_epsilon=1.0, release_epsilon=0.5
  )
  assert not unweighted.mechanism.normalize_by_steps


def test_weights_dropping_factory_needs_unweighted_inner():
  with pytest.raises(TypeError, match='UnweightedAggregationFactory'):
    factories.WeightsDroppingFactory(tff.aggregators.MeanFactory())


def test_privacy_record_rejects_unknown_mode():
  with pytest.raises(ValueError, match='privacy_mechanism must be one of'):
    factories.privacy_record(collections.OrderedDict(), 'laplace')
