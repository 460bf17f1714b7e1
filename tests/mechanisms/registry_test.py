"""Every mechanism of the registry: its JSON form, and two FedAvg rounds with
its own aggregation factory as `model_aggregator` of TFF's stock FedAvg."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats import mechanisms
from tff_brats.privacy import accounting

EVERY = {
  'none': mechanisms.NoPrivacy(),
  'selective_sharing': mechanisms.SelectiveSharing(0.5, 0.05),
  'sparse_vector': mechanisms.SparseVector(0.5, 0.05, 1.0, 1.0, 0.01),
  'gaussian': mechanisms.Gaussian(noise_multiplier=0.5, l2_norm_clip=1.0),
  'dp_sgd': mechanisms.DpSgd(noise_multiplier=1.0, sampling_probability=0.5),
}
# The mechanisms whose privacy is in the aggregation (DP-SGD's is in the
# clients' training: tests/learning/fed_avg_test.py runs its rounds).
AGGREGATING = [name for name in EVERY if name != 'dp_sgd']


def test_registry_lists_every_mechanism_once():
  assert tuple(EVERY) == mechanisms.NAMES
  for name, mechanism in EVERY.items():
    assert mechanisms.get(name) is type(mechanism)


@pytest.mark.parametrize('name', list(EVERY))
def test_dict_round_trip(name):
  mechanism = EVERY[name]
  data = mechanism.to_dict()
  assert data['name'] == name
  assert mechanisms.from_dict(data) == mechanism


def test_from_dict_rejects():
  svt = EVERY['sparse_vector'].to_dict()
  with pytest.raises(
    ValueError,
    match='^privacy_mechanism must be one of none, selective_sharing, '
    "sparse_vector, gaussian, dp_sgd. Found 'laplace'.$",
  ):
    mechanisms.from_dict({**svt, 'name': 'laplace'})
  with pytest.raises(
    ValueError, match="sparse_vector has no parameter 'noise'"
  ):
    mechanisms.from_dict({**svt, 'noise': 1})
  with pytest.raises(ValueError, match='threshold must be a non-negative'):
    mechanisms.from_dict({**svt, 'threshold': -1})
  with pytest.raises(ValueError, match='mechanism must be a dict with a name'):
    mechanisms.from_dict([1, 2])
  # A missing parameter takes the mechanism's default or, without one, fails.
  without = {k: v for k, v in svt.items() if k != 'release_epsilon'}
  with pytest.raises(
    ValueError, match='release_epsilon must be given for sparse_vector'
  ):
    mechanisms.from_dict(without)


# ------------------------------------------------ two rounds of FedAvg ----


@pytest.fixture
def runtime(tff_runtime):
  return tff_runtime


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


@pytest.mark.slow
@pytest.mark.parametrize('name', AGGREGATING)
def test_two_rounds_of_weighted_fed_avg(runtime, name):
  mechanism = EVERY[name]
  aggregator = mechanism.aggregation_factory(clients_per_round=2)
  state, outputs, initial, final = _run_two_rounds(aggregator)
  changed = any(
    not np.allclose(a, b) for a, b in zip(initial, final, strict=True)
  )
  assert changed, f'{name}: two rounds left the model unchanged'
  for weights in final:
    assert np.all(np.isfinite(weights))
  metrics = outputs[-1].metrics['aggregator']
  if name == 'gaussian':
    # TFF's factory keeps the round's DpEvent in its state: the one the
    # mechanism states.
    event = tff.aggregators.differential_privacy.extract_dp_event_from_state(
      state.aggregator
    )
    assert mechanism.record() == accounting.PrivacyRecord('gaussian', event)
    ledger = accounting.PrivacyLedger()
    ledger.record_round(0, ['a', 'b'], mechanism.record())
    assert math.isfinite(ledger.epsilon('a', delta=1e-5))
    return
  # The private-sharing factory's state holds the round's ε.
  record = state.aggregator['privacy_record']
  assert float(record['epsilon']) == mechanism.epsilon_per_round
  assert float(record['delta']) == 0.0
  m = metrics['privatization']
  assert m['num_clients'] == 2
  assert m['epsilon_per_client'] == mechanism.epsilon_per_round
  if name != 'none':
    # c = ceil(0.5 * 15 trainable values) = 8 at most per client.
    assert m['released_max'] <= 8


@pytest.mark.slow
@pytest.mark.parametrize('name', ['none', 'selective_sharing', 'sparse_vector'])
def test_two_rounds_of_unweighted_fed_avg(runtime, name):
  aggregator = EVERY[name].aggregation_factory(weighted=False)
  assert isinstance(aggregator, tff.aggregators.UnweightedAggregationFactory)
  _, outputs, initial, final = _run_two_rounds(aggregator, weighted=False)
  assert any(not np.allclose(a, b) for a, b in zip(initial, final, strict=True))
  assert outputs[-1].metrics['aggregator']['privatization']['num_clients'] == 2
