"""Tests of tff_brats.models.metrics, in Keras and aggregated by TFF."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats.models import metrics

SHAPE = (4, 4, 4)


def _pooled_dice(y_true, y_pred, threshold=0.5):
  """Per-region Dice of all voxels pooled, in numpy (both empty -> 1)."""
  predicted = np.asarray(y_pred) >= threshold
  target = np.asarray(y_true) > 0.5
  axes = tuple(range(predicted.ndim - 1))
  intersection = np.sum(predicted & target, axis=axes)
  total = np.sum(predicted, axis=axes) + np.sum(target, axis=axes)
  return np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)


def _random_batch(rng, batch_size, target_fraction=(0.3, 0.6, 0.2)):
  y_true = (rng.random((batch_size, *SHAPE, 3)) < target_fraction).astype(
    np.float32
  )
  y_pred = rng.random((batch_size, *SHAPE, 3)).astype(np.float32)
  return y_true, y_pred


def _result(metric):
  return float(metric.result().numpy())


class TestPooledDice:
  def test_hand_computed_counts(self):
    # One case of 4 voxels (1 x 2 x 2), channels (TC, WT, ET):
    #   TC: predicted {0, 1}, target {0}: Dice 2 * 1 / (2 + 1) = 2/3;
    #   WT: predicted all 4, target {0, 1, 2}: 2 * 3 / (4 + 3) = 6/7;
    #   ET: predicted none, target none: 1 by convention.
    y_pred = np.zeros((1, 1, 2, 2, 3), np.float32)
    y_true = np.zeros((1, 1, 2, 2, 3), np.float32)
    y_pred[..., 0] = np.reshape([0.9, 0.8, 0.1, 0.2], (1, 1, 2, 2))
    y_true[..., 0] = np.reshape([1, 0, 0, 0], (1, 1, 2, 2))
    y_pred[..., 1] = 0.9
    y_true[..., 1] = np.reshape([1, 1, 1, 0], (1, 1, 2, 2))
    y_pred[..., 2] = 0.1
    expected = {'TC': 2 / 3, 'WT': 6 / 7, 'ET': 1.0}
    for region, value in expected.items():
      metric = metrics.PooledDice(region)
      metric.update_state(y_true, y_pred)
      assert _result(metric) == pytest.approx(value)
      assert metric.name == f'dice_{region}'
    metric = metrics.PooledDice()
    metric.update_state(y_true, y_pred)
    assert metric.name == 'dice_mean'
    assert _result(metric) == pytest.approx(np.mean(list(expected.values())))
    np.testing.assert_array_equal(metric.intersection.numpy(), [1, 3, 0])
    np.testing.assert_array_equal(metric.predicted.numpy(), [2, 4, 0])
    np.testing.assert_array_equal(metric.target.numpy(), [1, 3, 0])

  def test_one_empty_region_is_zero(self):
    y_true = np.zeros((1, *SHAPE, 3), np.float32)
    y_pred = np.zeros((1, *SHAPE, 3), np.float32)
    y_true[0, 0, 0, 0, 0] = 1.0  # TC in the target, never predicted
    y_pred[0, 1, 1, 1, 2] = 0.9  # ET predicted, not in the target
    for region, expected in (('TC', 0.0), ('WT', 1.0), ('ET', 0.0)):
      metric = metrics.PooledDice(region)
      metric.update_state(y_true, y_pred)
      assert _result(metric) == expected

  def test_accumulates_pooled_counts_over_batches(self):
    rng = np.random.default_rng(0)
    batches = [_random_batch(rng, size) for size in (1, 3, 2)]
    # A sparse, well-predicted batch: its own Dice is high, so averaging
    # per-batch Dice would differ from pooling.
    y_true = np.zeros((2, *SHAPE, 3), np.float32)
    y_true[:, :2, :2, :2] = 1.0
    batches.append((y_true, 0.2 + 0.6 * y_true))
    metric = metrics.PooledDice()
    per_batch = []
    for y_true, y_pred in batches:
      metric.update_state(y_true, y_pred)
      per_batch.append(_pooled_dice(y_true, y_pred).mean())
    all_true = np.concatenate([b[0] for b in batches])
    all_pred = np.concatenate([b[1] for b in batches])
    expected = _pooled_dice(all_true, all_pred).mean()
    assert _result(metric) == pytest.approx(expected, rel=1e-6)
    assert abs(expected - np.mean(per_batch)) > 0.05

  def test_update_in_a_tf_function(self):
    rng = np.random.default_rng(1)
    batches = [_random_batch(rng, 2) for _ in range(3)]
    metric = metrics.PooledDice('WT')

    @tf.function
    def update(y_true, y_pred):
      metric.update_state(y_true, y_pred)

    for y_true, y_pred in batches:
      update(tf.constant(y_true), tf.constant(y_pred))
    expected = _pooled_dice(
      np.concatenate([b[0] for b in batches]),
      np.concatenate([b[1] for b in batches]),
    )[1]
    assert _result(metric) == pytest.approx(expected, rel=1e-6)

  def test_threshold_includes_its_value(self):
    y_true = np.zeros((1, 1, 1, 4, 3), np.float32)
    y_true[..., 1:3, :] = 1.0
    y_pred = np.zeros((1, 1, 1, 4, 3), np.float32)
    # Voxels just below 0.5, at exactly 0.5, at 0.3 and below 0.3.
    y_pred[..., :] = np.reshape([0.499, 0.5, 0.3, 0.1], (4, 1))
    at_half = metrics.PooledDice('TC')
    at_half.update_state(y_true, y_pred)
    # Predicted {1}, target {1, 2}: 2 / 3.
    assert _result(at_half) == pytest.approx(2 / 3)
    lower = metrics.PooledDice('TC', threshold=0.3)
    lower.update_state(y_true, y_pred)
    # Predicted {0, 1, 2}, target {1, 2}: 4 / 5.
    assert _result(lower) == pytest.approx(4 / 5)

  def test_targets_above_half_count(self):
    y_pred = np.full((1, 1, 1, 2, 3), 0.9, np.float32)
    y_true = np.zeros((1, 1, 1, 2, 3), np.float32)
    y_true[..., 0, :] = 0.6  # counts
    y_true[..., 1, :] = 0.4  # does not
    metric = metrics.PooledDice('ET')
    metric.update_state(y_true, y_pred)
    assert _result(metric) == pytest.approx(2 / 3)

  def test_half_precision_predictions(self):
    rng = np.random.default_rng(2)
    y_true, y_pred = _random_batch(rng, 2)
    metric = metrics.PooledDice()
    metric.update_state(y_true, tf.constant(y_pred, tf.float16))
    expected = _pooled_dice(y_true, y_pred.astype(np.float16)).mean()
    assert _result(metric) == pytest.approx(expected, rel=1e-6)

  def test_reset_state(self):
    rng = np.random.default_rng(3)
    metric = metrics.PooledDice()
    metric.update_state(*_random_batch(rng, 2))
    assert _result(metric) < 1.0
    metric.reset_state()
    for variable in metric.variables:
      np.testing.assert_array_equal(variable.numpy(), [0, 0, 0])
    assert _result(metric) == 1.0  # nothing seen: both empty
    y_true, y_pred = _random_batch(rng, 1)
    metric.update_state(y_true, y_pred)
    assert _result(metric) == pytest.approx(
      _pooled_dice(y_true, y_pred).mean(), rel=1e-6
    )

  def test_variables_are_summable_float64_counts(self):
    metric = metrics.PooledDice(('TC', 'ET'))
    assert [v.name.split('/')[-1].split(':')[0] for v in metric.variables] == [
      'intersection',
      'predicted',
      'target',
    ]
    for variable in metric.variables:
      assert variable.dtype == tf.float64
      assert variable.shape == (2,)
    assert metric.name == 'dice_mean_TC_ET'
    assert metric.result().dtype == tf.float32

  def test_serialisation_round_trip(self):
    metric = metrics.PooledDice(('WT', 'ET'), threshold=0.4, name='my_dice')
    config = metric.get_config()
    assert config['regions'] == ['WT', 'ET']
    assert config['threshold'] == 0.4
    restored = metrics.PooledDice.from_config(config)
    assert restored.get_config() == config
    deserialised = tf.keras.metrics.deserialize(
      tf.keras.metrics.serialize(metric)
    )
    assert type(deserialised) is metrics.PooledDice
    assert deserialised.get_config() == config
    y_true, y_pred = _random_batch(np.random.default_rng(4), 2)
    for m in (metric, restored, deserialised):
      m.update_state(y_true, y_pred)
    assert _result(restored) == _result(metric)
    assert _result(deserialised) == _result(metric)
    assert _result(metric) == pytest.approx(
      _pooled_dice(y_true, y_pred, threshold=0.4)[1:].mean(), rel=1e-6
    )

  def test_keras_evaluate_pools_over_batches(self):
    rng = np.random.default_rng(5)
    y_true, y_pred = _random_batch(rng, 6)
    inputs = tf.keras.Input((*SHAPE, 3))
    model = tf.keras.Model(inputs, tf.keras.layers.Activation('linear')(inputs))
    model.compile(
      loss='binary_crossentropy', metrics=metrics.segmentation_metrics()
    )
    results = model.evaluate(
      y_pred, y_true, batch_size=4, return_dict=True, verbose=0
    )
    expected = _pooled_dice(y_true, y_pred)
    for index, region in enumerate(('TC', 'WT', 'ET')):
      assert results[f'dice_{region}'] == pytest.approx(expected[index], 1e-6)
    assert results['dice_mean'] == pytest.approx(expected.mean(), rel=1e-6)

  @pytest.mark.parametrize(
    'kwargs, message',
    [
      ({'regions': 'XX'}, 'regions must be distinct names'),
      ({'regions': ()}, 'regions must be distinct names'),
      ({'regions': ('TC', 'TC')}, 'regions must be distinct names'),
      ({'regions': 3}, 'regions must be distinct names'),
      ({'threshold': 0}, r'threshold must be in \(0, 1\). Found 0.'),
      ({'threshold': 1.0}, 'threshold must be in'),
      ({'threshold': '0.5'}, 'threshold must be in'),
      ({'threshold': True}, 'threshold must be in'),
    ],
  )
  def test_bad_arguments(self, kwargs, message):
    with pytest.raises(ValueError, match=message):
      metrics.PooledDice(**kwargs)

  @pytest.mark.parametrize(
    'true_shape, pred_shape, kwargs, message',
    [
      ((1, 4, 4, 4, 3), (1, 4, 4, 4, 2), {}, 'y_pred must have 3 channels'),
      ((1, 4, 4, 3, 3), (1, 4, 4, 4, 3), {}, 'y_true must have the shape'),
      ((3,), (3,), {}, 'y_pred must have a batch and a channel axis'),
      (
        (1, 4, 4, 4, 3),
        (1, 4, 4, 4, 3),
        {'sample_weight': np.ones(1)},
        'sample_weight must be None',
      ),
    ],
  )
  def test_bad_inputs(self, true_shape, pred_shape, kwargs, message):
    metric = metrics.PooledDice()
    with pytest.raises(ValueError, match=message):
      metric.update_state(
        np.zeros(true_shape, np.float32),
        np.zeros(pred_shape, np.float32),
        **kwargs,
      )


def test_segmentation_metrics():
  first = metrics.segmentation_metrics(threshold=0.3)
  second = metrics.segmentation_metrics()
  assert [m.name for m in first] == [
    'dice_TC',
    'dice_WT',
    'dice_ET',
    'dice_mean',
  ]
  assert [m.regions for m in first] == [
    ('TC',),
    ('WT',),
    ('ET',),
    ('TC', 'WT', 'ET'),
  ]
  assert all(m.threshold == 0.3 for m in first)
  assert all(m.threshold == 0.5 for m in second)
  # New objects on every call (TFF builds a new model per computation).
  assert not {id(v) for m in first for v in m.variables} & {
    id(v) for m in second for v in m.variables
  }


# ------------------------------------------------------------------ TFF ----


def _client_data(rng, num_examples, well_predicted):
  """(y_true, x) where x, the identity model's prediction, is random or close
  to y_true; ET is empty in targets and predictions unless well_predicted."""
  y_true = (rng.random((num_examples, *SHAPE, 3)) < (0.3, 0.6, 0.2)).astype(
    np.float32
  )
  x = rng.random((num_examples, *SHAPE, 3)).astype(np.float32)
  if well_predicted:
    x = (0.45 * y_true + 0.55 * x).astype(np.float32)
  else:
    y_true[..., 2] = 0.0
    x[..., 2] *= 0.5
  return y_true, x


def _dataset(y_true, x):
  return tf.data.Dataset.from_tensor_slices((x, y_true)).batch(2)


def _model_fn(input_spec):
  def model_fn():
    inputs = tf.keras.Input((*SHAPE, 3))
    # Identity kernel: predictions are the inputs, whatever the weights'
    # learning rate, so the expected Dice is computable from the data.
    outputs = tf.keras.layers.Dense(
      3, use_bias=False, kernel_initializer=tf.keras.initializers.Identity()
    )(inputs)
    return tff.learning.models.from_keras_model(
      tf.keras.Model(inputs, outputs),
      loss=tf.keras.losses.BinaryCrossentropy(),
      input_spec=input_spec,
      metrics=metrics.segmentation_metrics(),
    )

  return model_fn


def _expected(clients):
  dice = _pooled_dice(
    np.concatenate([c[0] for c in clients]),
    np.concatenate([c[1] for c in clients]),
  )
  return {
    'dice_TC': dice[0],
    'dice_WT': dice[1],
    'dice_ET': dice[2],
    'dice_mean': dice.mean(),
  }


def _assert_metrics(actual, expected):
  for name, value in expected.items():
    assert actual[name] == pytest.approx(value, rel=1e-6), name


@pytest.fixture
def runtime(tff_runtime):
  return tff_runtime


@pytest.fixture(scope='module')
def clients():
  rng = np.random.default_rng(10)
  return [_client_data(rng, 5, False), _client_data(rng, 3, True)]


def _check_pooling_matters(clients):
  """The per-client mean differs from the pooled value: the test can fail."""
  pooled = _expected(clients)
  per_client = [_expected([c]) for c in clients]
  for name in ('dice_ET', 'dice_mean'):
    client_mean = np.mean([c[name] for c in per_client])
    assert abs(pooled[name] - client_mean) > 0.02, name


def test_fed_eval_aggregates_pooled_dice(runtime, clients):
  del runtime  # the installed context runs the computations
  _check_pooling_matters(clients)
  datasets = [_dataset(*c) for c in clients]
  process = tff.learning.algorithms.build_fed_eval(
    _model_fn(datasets[0].element_spec)
  )
  state = process.initialize()
  output = process.next(state, datasets)
  evaluation = output.metrics['client_work']['eval']
  _assert_metrics(evaluation['current_round_metrics'], _expected(clients))
  assert evaluation['current_round_metrics']['num_examples'] == 8
  # A second round on the second client only: its counts add to the first
  # round's in the running total, then the total is finalised once.
  output = process.next(output.state, datasets[1:])
  evaluation = output.metrics['client_work']['eval']
  _assert_metrics(evaluation['current_round_metrics'], _expected(clients[1:]))
  _assert_metrics(
    evaluation['total_rounds_metrics'],
    _expected([*clients, clients[1]]),
  )


def test_fed_avg_train_metrics_are_pooled_dice(runtime, clients):
  del runtime  # the installed context runs the computations
  datasets = [_dataset(*c) for c in clients]
  process = tff.learning.algorithms.build_weighted_fed_avg(
    _model_fn(datasets[0].element_spec),
    client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.0),
  )
  output = process.next(process.initialize(), datasets)
  train = output.metrics['client_work']['train']
  _assert_metrics(train, _expected(clients))
  assert train['num_batches'] == 5
