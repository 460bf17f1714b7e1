"""Tests of tff_brats.learning.fed_avg (TFF, on the project's local runtime).

Keras invalidates models built before another model is built inside a
`tf.Graph`, and TFF builds models in graphs when it traces a process, so
every test builds its process first and its Keras models after it.
"""

import collections
import math
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import testing_utils
from tff_brats import mechanisms
from tff_brats.learning import client_training
from tff_brats.learning import fed_avg
from tff_brats.models import segresnet

# The smallest SegResNet with a skip connection (two levels): tracing the
# process takes about 10 s instead of about 30 s for the default depth.
MODEL_CONFIG = dict(init_filters=8, blocks_down=(1, 1), blocks_up=(1,))
CROP = (16, 16, 16)
# With the training statistics, to compare them with training outside TFF
# (tests/training/client_measurements_test.py pins what the default sends).
CONFIG = fed_avg.ClientConfig(
  model_config=MODEL_CONFIG, crop_size=CROP, report_training_statistics=True
)
SEED = 2024
# Client 'a': 2 cases, so 2 local steps per pass (batch 1, one crop per
# case); 'b': 1 case, 1 step.
CLIENT_SHAPES = {'a': [(16, 16, 16), (20, 16, 16)], 'b': [(16, 18, 16)]}
CLIENTS = ('a', 'b')
STEPS = (2.0, 1.0)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  return testing_utils.write_prepared_folder(str(root), CLIENT_SHAPES)


@pytest.fixture
def runtime(tff_runtime):
  return tff_runtime


@pytest.fixture(scope='module')
def fed_avg_process():
  """Plain FedAvg: no privacy, server SGD with learning rate 1."""
  return fed_avg.build_fed_avg_process(
    CONFIG,
    mechanisms.NoPrivacy().aggregation_factory(),
    server_optimizer='sgd',
    server_learning_rate=1.0,
  )


def _client_inputs(folder, keys):
  return [
    collections.OrderedDict(
      shard_paths=np.array(folder.shard_paths(client), dtype=object),
      data_key=key,
    )
    for client, key in zip(CLIENTS, keys, strict=True)
  ]


def _batches(dataset):
  return [tuple(t.numpy() for t in batch) for batch in dataset]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for batch_a, batch_b in zip(a, b, strict=True):
    for x, y in zip(batch_a, batch_b, strict=True):
      np.testing.assert_array_equal(x, y)


def _max_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(a, b, strict=True)
  )


class TestClientDataKey:
  def test_deterministic_for_an_int_seed(self):
    key = fed_avg.client_data_key(SEED, 3, 1)
    assert key.dtype == np.int64 and key.shape == (2,)
    np.testing.assert_array_equal(key, fed_avg.client_data_key(SEED, 3, 1))

  def test_golden_value(self):
    # numpy 1.25.2: SeedSequence([2024, 3, 1]).generate_state(2, np.uint64)
    # viewed as int64. SeedSequence's output is stable across numpy
    # versions; a change here would give resumed runs other data.
    np.testing.assert_array_equal(
      fed_avg.client_data_key(2024, 3, 1),
      [8394387996252300889, 7016408783192236803],
    )

  def test_distinct_across_seeds_rounds_and_clients(self):
    # 2·10·10 keys of 128 bits: a collision by chance has odds ~1e-34.
    keys = {
      tuple(fed_avg.client_data_key(seed, round_num, client))
      for seed in (SEED, SEED + 1)
      for round_num in range(10)
      for client in range(10)
    }
    assert len(keys) == 200

  def test_fresh_without_seed(self):
    # Two draws of 128 bits from the OS coincide with odds 2^-128.
    a = fed_avg.client_data_key(None, 1, 0)
    b = fed_avg.client_data_key(None, 1, 0)
    assert a.dtype == np.int64 and a.shape == (2,)
    assert not np.array_equal(a, b)


class TestMakeClientDataset:
  def test_element_spec(self, folder):
    dataset = fed_avg.make_client_dataset(
      folder.shard_paths('a'), fed_avg.client_data_key(SEED, 1, 0), CONFIG
    )
    assert dataset.element_spec == (
      tf.TensorSpec([1, *CROP, 4], tf.float32),
      tf.TensorSpec([1, *CROP, 3], tf.float32),
      tf.TensorSpec([2], tf.int64),
    )

  def test_same_key_same_batches(self, folder):
    key = fed_avg.client_data_key(SEED, 1, 0)
    a = _batches(
      fed_avg.make_client_dataset(folder.shard_paths('a'), key, CONFIG)
    )
    b = _batches(
      fed_avg.make_client_dataset(folder.shard_paths('a'), key, CONFIG)
    )
    assert len(a) == 2
    _assert_batches_equal(a, b)

  def test_other_key_other_batches(self, folder):
    # The intensity augmentation is continuous: equal images would take
    # equal uniform draws.
    paths = folder.shard_paths('a')
    a = _batches(
      fed_avg.make_client_dataset(
        paths, fed_avg.client_data_key(SEED, 1, 0), CONFIG
      )
    )
    b = _batches(
      fed_avg.make_client_dataset(
        paths, fed_avg.client_data_key(SEED, 2, 0), CONFIG
      )
    )
    for batch_a in a:
      for batch_b in b:
        assert not np.array_equal(batch_a[0], batch_b[0])
        assert not np.array_equal(batch_a[2], batch_b[2])

  def test_epochs_are_fresh_passes(self, folder):
    key = fed_avg.client_data_key(SEED, 1, 0)
    paths = folder.shard_paths('a')
    one = _batches(fed_avg.make_client_dataset(paths, key, CONFIG))
    two_epochs = fed_avg.ClientConfig(
      model_config=MODEL_CONFIG, crop_size=CROP, client_epochs_per_round=2
    )
    two = _batches(fed_avg.make_client_dataset(paths, key, two_epochs))
    assert len(one) == 2 and len(two) == 4
    # The first pass does not depend on the number of passes ...
    _assert_batches_equal(two[:2], one)
    # ... and the second has fresh crops and augmentation, not a replay
    # (in any order) of the first.
    for first in two[:2]:
      for second in two[2:]:
        assert not np.array_equal(first[0], second[0])
    # Every batch has its own dropout key.
    assert len({tuple(batch[2]) for batch in two}) == 4

  def test_shard_paths_of_unknown_length_in_a_graph(self, folder):
    # TFF passes shard paths as str[?].
    @tf.function(
      input_signature=[
        tf.TensorSpec([None], tf.string),
        tf.TensorSpec([2], tf.int64),
      ]
    )
    def count(paths, key):
      dataset = fed_avg.make_client_dataset(paths, key, CONFIG)
      return dataset.reduce(0, lambda n, _: n + 1)

    key = fed_avg.client_data_key(SEED, 1, 0)
    assert int(count(folder.shard_paths('a'), key)) == 2
    assert int(count(folder.shard_paths('b'), key)) == 1


class TestClientConfig:
  @pytest.mark.parametrize(
    'overrides, message',
    [
      (
        dict(client_epochs_per_round=0),
        'client_epochs_per_round must be a positive integer. Found 0.',
      ),
      (
        dict(client_learning_rate=-0.1),
        'client_learning_rate must be a positive number. Found -0.1.',
      ),
      (
        dict(loss='focal'),
        "loss must be one of ('dice', 'dice_bce'). Found 'focal'.",
      ),
      (
        dict(precision='float64'),
        'precision must be one of float32, mixed_float16, mixed_bfloat16. '
        "Found 'float64'.",
      ),
      (
        dict(crop_size=(16, 16)),
        'crop_size must be 3 positive integers (d, h, w) or one positive '
        'integer. Found (16, 16).',
      ),
      (
        dict(batch_size=0),
        'batch_size must be a positive integer. Found 0.',
      ),
      (
        dict(crops_per_case=0),
        'crops_per_case must be a positive integer. Found 0.',
      ),
    ],
  )
  def test_bad_arguments(self, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
      fed_avg.ClientConfig(model_config=MODEL_CONFIG, **overrides)

  def test_build_model(self):
    model = CONFIG.build_model()
    assert isinstance(model, segresnet.SegResNet)
    assert model.built
    assert model.init_filters == 8 and model.blocks_down == (1, 1)
    assert model.compute_dtype == 'float32'
    # Trainable parameters by hand, f = 8 filters: initial conv 27·4f;
    # level 0: one block of f channels; level 1: strided conv 27·f·2f and
    # one block of 2f; decoder: 1³ conv 2f·f and one block of f; head:
    # GroupNorm 2f and conv 3f + 3. A block is 2 GroupNorms and 2 convs.
    f = 8

    def block(c):
      return 2 * 2 * c + 2 * 27 * c * c

    expected = (
      27 * 4 * f
      + block(f)
      + 27 * f * 2 * f
      + block(2 * f)
      + 2 * f * f
      + block(f)
      + 2 * f
      + 3 * f
      + 3
    )
    assert model.num_parameters == expected

  def test_build_model_under_a_precision(self):
    config = fed_avg.ClientConfig(
      model_config=MODEL_CONFIG, crop_size=CROP, precision='mixed_bfloat16'
    )
    model = config.build_model()
    assert model.compute_dtype == 'bfloat16'
    assert model.variable_dtype == 'float32'
    # The global policy is restored.
    assert tf.keras.mixed_precision.global_policy().name == 'float32'


class TestBuildServerOptimizer:
  WEIGHTS = tf.constant([1.0, 2.0, -3.0])
  GRADIENTS = tf.constant([2.0, -0.5, 0.25])

  def test_sgd_has_no_momentum(self):
    optimizer = fed_avg.build_server_optimizer('sgd', 0.5)
    state = optimizer.initialize(tf.TensorSpec([3], tf.float32))
    state, weights = optimizer.next(state, self.WEIGHTS, self.GRADIENTS)
    np.testing.assert_allclose(weights, [0.0, 2.25, -3.125])
    # Two equal steps move twice as far (momentum would move 2.9 times).
    _, weights = optimizer.next(state, weights, self.GRADIENTS)
    np.testing.assert_allclose(weights, [-1.0, 2.5, -3.25])

  def test_adam(self):
    # Adam's first bias-corrected step is lr·g/(|g| + ε') ≈ lr·sign(g).
    optimizer = fed_avg.build_server_optimizer('adam', 0.5)
    state = optimizer.initialize(tf.TensorSpec([3], tf.float32))
    _, weights = optimizer.next(state, self.WEIGHTS, self.GRADIENTS)
    np.testing.assert_allclose(weights, [0.5, 2.5, -3.5], rtol=0, atol=1e-5)

  def test_unknown_name(self):
    message = (
      "server_optimizer must be one of ('sgd', 'adam'). Found 'rmsprop'."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
      fed_avg.build_server_optimizer('rmsprop', 1.0)

  @pytest.mark.parametrize('learning_rate', [0.0, -1.0, float('nan')])
  def test_bad_learning_rate(self, learning_rate):
    message = (
      'server_learning_rate must be a positive number. '
      f'Found {learning_rate!r}.'
    )
    with pytest.raises(ValueError, match=re.escape(message)):
      fed_avg.build_server_optimizer('sgd', learning_rate)


class TestBuildFedAvgProcess:
  """Argument checks and types; no execution."""

  def test_rejects_an_unweighted_aggregator(self):
    message = (
      'model_aggregator must be a tff.aggregators.WeightedAggregationFactory. '
      'Found UnweightedMeanFactory.'
    )
    with pytest.raises(TypeError, match=re.escape(message)):
      fed_avg.build_fed_avg_process(
        CONFIG, tff.aggregators.UnweightedMeanFactory()
      )

  def test_rejects_an_unknown_server_optimizer(self):
    with pytest.raises(ValueError, match='server_optimizer must be one of'):
      fed_avg.build_fed_avg_process(CONFIG, server_optimizer='rmsprop')

  def test_client_computations_are_traced_once_per_config(self):
    first = fed_avg._client_computations(CONFIG)
    # An equal config (a new object) reuses them; another config does not.
    same = fed_avg.ClientConfig(
      model_config=dict(MODEL_CONFIG),
      crop_size=CROP,
      report_training_statistics=True,
    )
    assert all(
      a is b
      for a, b in zip(first, fed_avg._client_computations(same), strict=True)
    )
    other = fed_avg.ClientConfig(
      model_config=MODEL_CONFIG,
      crop_size=CROP,
      client_learning_rate=0.5,
      report_training_statistics=True,
    )
    assert not any(
      a is b
      for a, b in zip(first, fed_avg._client_computations(other), strict=True)
    )

  def test_type_signature(self, fed_avg_process):
    next_type = fed_avg_process.next.type_signature
    state_type = fed_avg_process.initialize.type_signature.result
    assert next_type.parameter[0] == state_type
    client_input = tff.FederatedType(
      tff.StructWithPythonType(
        [
          ('shard_paths', tff.TensorType(np.str_, [None])),
          ('data_key', tff.TensorType(np.int64, [2])),
        ],
        collections.OrderedDict,
      ),
      tff.CLIENTS,
    )
    assert next_type.parameter[1].is_equivalent_to(client_input)
    assert str(next_type.parameter[1]) == (
      '{<shard_paths=str[?],data_key=int64[2]>}@CLIENTS'
    )
    assert len(next_type.parameter) == 2
    assert next_type.result[0] == state_type

    train = tff.StructWithPythonType(
      [
        ('num_clients', np.int32),
        ('steps', np.float32),
        ('loss_sum', np.float32),
        ('dice_intersection', tff.TensorType(np.float64, [3])),
        ('dice_predicted', tff.TensorType(np.float64, [3])),
        ('dice_target', tff.TensorType(np.float64, [3])),
        ('non_finite', np.int32),
      ],
      collections.OrderedDict,
    )
    metrics = next_type.result[1]
    assert metrics.placement == tff.SERVER
    assert metrics.member['client_work']['train'].is_equivalent_to(train)

    # The global model is the Keras model's variables, in order.
    model = CONFIG.build_model()
    weights = state_type.member['global_model_weights']
    assert [(t.dtype, tuple(t.shape)) for t in weights['trainable']] == [
      (np.float32, tuple(v.shape)) for v in model.trainable_variables
    ]
    assert [(t.dtype, tuple(t.shape)) for t in weights['non_trainable']] == [
      (np.int64, (2,))  # the dropout key
    ]


class TestExecution:
  def test_round_is_the_step_weighted_mean_of_client_training(
    self, fed_avg_process, runtime, folder
  ):
    process = fed_avg_process
    tf.keras.utils.set_random_seed(SEED)
    model = CONFIG.build_model()
    initial = [v.numpy() for v in model.trainable_variables]
    non_trainable = [v.numpy() for v in model.non_trainable_variables]
    state = process.set_model_weights(
      process.initialize(),
      tff.learning.models.ModelWeights(
        trainable=initial, non_trainable=non_trainable
      ),
    )
    keys = [fed_avg.client_data_key(SEED, 1, i) for i in range(len(CLIENTS))]
    output = process.next(state, _client_inputs(folder, keys))
    new = process.get_model_weights(output.state)

    # The same client work outside TFF, one trainer for both clients (its
    # optimiser restarts every call).
    trainer = client_training.ClientTrainer(
      CONFIG.build_model(),
      learning_rate=CONFIG.client_learning_rate,
      loss=CONFIG.loss,
    )
    outside = []
    for client, key in zip(CLIENTS, keys, strict=True):
      dataset = fed_avg.make_client_dataset(
        tf.constant(folder.shard_paths(client)), key, CONFIG
      )
      out = trainer.train(initial, dataset)
      outside.append(
        {
          k: [u.numpy() for u in v] if k == 'update' else v.numpy()
          for k, v in out.items()
        }
      )
    assert tuple(float(o['steps']) for o in outside) == STEPS

    # Server SGD with learning rate 1 on the step-weighted mean update:
    # w - Σ n_i ΔW_i / Σ n_i.
    n_a, n_b = STEPS
    expected = [
      w - (n_a * u_a + n_b * u_b) / (n_a + n_b)
      for w, u_a, u_b in zip(
        initial, outside[0]['update'], outside[1]['update'], strict=True
      )
    ]
    tolerance = 2e-6
    for actual, want in zip(new.trainable, expected, strict=True):
      np.testing.assert_allclose(actual, want, rtol=0, atol=tolerance)
    # The comparison can tell: the round moved the weights by far more than
    # the tolerance, and the unweighted mean is far off.
    assert _max_difference(new.trainable, initial) > 100 * tolerance
    unweighted = [
      w - (u_a + u_b) / 2
      for w, u_a, u_b in zip(
        initial, outside[0]['update'], outside[1]['update'], strict=True
      )
    ]
    assert _max_difference(new.trainable, unweighted) > 10 * tolerance
    # FedAvg leaves the non-trainable weights (the dropout key) alone.
    for actual, want in zip(new.non_trainable, non_trainable, strict=True):
      np.testing.assert_array_equal(actual, want)

    train = output.metrics['client_work']['train']
    assert train['num_clients'] == 2
    assert train['steps'] == sum(STEPS)
    assert train['loss_sum'] == pytest.approx(
      sum(float(o['loss_sum']) for o in outside), rel=1e-5
    )
    for key in ('dice_intersection', 'dice_predicted', 'dice_target'):
      np.testing.assert_array_equal(train[key], sum(o[key] for o in outside))
    assert train['non_finite'] == 0
    privatization = output.metrics['aggregator']['privatization']
    assert privatization['num_clients'] == 2
    num_values = sum(w.size for w in initial)
    assert privatization['released_mean'] == num_values  # no privacy
    assert output.metrics['finalizer']['update_non_finite'] == 0

  def test_sparse_vector_round(self, runtime, folder):
    gamma, fraction = 1e-3, 0.1
    process = fed_avg.build_fed_avg_process(
      CONFIG,
      mechanisms.SparseVector(
        shared_fraction=fraction,
        clip_bound=gamma,
        selection_epsilon=1.0,
        release_epsilon=1.0,
      ).aggregation_factory(),
    )
    state = process.initialize()
    initial = [
      np.asarray(w) for w in process.get_model_weights(state).trainable
    ]
    num_values = sum(w.size for w in initial)
    shared = math.ceil(fraction * num_values)
    keys = [fed_avg.client_data_key(SEED, 1, i) for i in range(len(CLIENTS))]
    output = process.next(state, _client_inputs(folder, keys))

    privatization = output.metrics['aggregator']['privatization']
    assert privatization['num_clients'] == 2
    assert privatization['epsilon_per_client'] == pytest.approx(2.0)
    assert privatization['released_min'] > 0
    assert privatization['released_max'] <= shared
    assert privatization['released_mean'] <= shared
    assert output.metrics['client_work']['train']['steps'] == sum(STEPS)

    new = [
      np.asarray(w) for w in process.get_model_weights(output.state).trainable
    ]
    # Only released values move the model: at most as many as the two
    # clients released.
    changed = sum(
      int(np.sum(a != b)) for a, b in zip(new, initial, strict=True)
    )
    assert 0 < changed <= 2 * privatization['released_mean']
    # A client releases n·clip(·, -γ, γ) per value; the step-weighted mean
    # of the two moves a value by at most (2·2γ + 1·γ) / 3 = 5γ/3.
    bound = (STEPS[0] ** 2 + STEPS[1] ** 2) / sum(STEPS) * gamma
    assert _max_difference(new, initial) <= bound * (1 + 1e-5)


class TestDpSgdRound:
  def test_round_is_the_mean_of_the_clients_dp_sgd(self, runtime, folder):
    # With a noise seed the lots and the noise are a function of (seed,
    # data key), so the round inside TFF can be replayed outside it.
    mechanism = mechanisms.DpSgd(
      noise_multiplier=0.5,
      l2_norm_clip=0.1,
      sampling_probability=0.5,
      local_steps=3,
    )
    config = fed_avg.ClientConfig(
      model_config=MODEL_CONFIG,
      crop_size=CROP,
      dp_sgd=mechanism.client_training(noise_seed=9),
    )
    process = fed_avg.build_fed_avg_process(
      config, mechanism.aggregation_factory()
    )
    element = process.next.type_signature.parameter[1].member
    assert str(element.shard_paths) == 'str[?]'  # clients still send paths
    state = process.initialize()
    initial = [
      np.asarray(w) for w in process.get_model_weights(state).trainable
    ]
    keys = [fed_avg.client_data_key(SEED, 1, i) for i in range(len(CLIENTS))]
    output = process.next(state, _client_inputs(folder, keys))
    new = process.get_model_weights(output.state).trainable
    train = output.metrics['client_work']['train']
    assert train['num_clients'] == 2
    assert train['steps'] == 6.0  # T = 3 each, whatever the lots were

    trainer = fed_avg.make_client_trainer(config, config.build_model())
    updates = []
    for client, key in zip(CLIENTS, keys, strict=True):
      dataset = fed_avg.make_client_dataset(
        tf.constant(folder.shard_paths(client)), key, config
      )
      out = trainer.train(initial, dataset)
      assert float(out['steps']) == 3.0
      updates.append([u.numpy() for u in out['update']])
    expected = [
      w - (a + b) / 2
      for w, a, b in zip(initial, updates[0], updates[1], strict=True)
    ]
    tolerance = 2e-6
    for actual, want in zip(new, expected, strict=True):
      np.testing.assert_allclose(actual, want, rtol=0, atol=tolerance)
    assert _max_difference(new, initial) > 100 * tolerance


class TestFrozenLayers:
  def test_clients_train_only_the_named_parts_from_the_global_frozen_ones(
    self, runtime, folder
  ):
    config = fed_avg.ClientConfig(
      model_config=MODEL_CONFIG,
      crop_size=CROP,
      trainable_layers=('up0', 'head'),
    )
    process = fed_avg.build_fed_avg_process(
      config, mechanisms.NoPrivacy().aggregation_factory()
    )
    # The global model: another seed than any client model's own init, so
    # a client that trained on its own frozen weights would differ.
    tf.keras.utils.set_random_seed(SEED)
    model = config.build_model()
    trainable = [v.numpy() for v in model.trainable_variables]
    frozen = [v.numpy() for v in model.non_trainable_variables]
    assert len(frozen) > 1  # the dropout key and the frozen parts
    state = process.set_model_weights(
      process.initialize(),
      tff.learning.models.ModelWeights(
        trainable=trainable, non_trainable=frozen
      ),
    )
    keys = [fed_avg.client_data_key(SEED, 1, i) for i in range(len(CLIENTS))]
    output = process.next(state, _client_inputs(folder, keys))
    new = process.get_model_weights(output.state)
    # The update covers the named parts only; the frozen ones stay.
    assert [w.shape for w in new.trainable] == [w.shape for w in trainable]
    for actual, want in zip(new.non_trainable, frozen, strict=True):
      np.testing.assert_array_equal(actual, want)

    tf.keras.utils.set_random_seed(SEED + 1)
    trainer = fed_avg.make_client_trainer(config, config.build_model())
    updates = []
    for client, key in zip(CLIENTS, keys, strict=True):
      dataset = fed_avg.make_client_dataset(
        tf.constant(folder.shard_paths(client)), key, config
      )
      out = trainer.train(trainable, dataset, frozen)
      updates.append(([u.numpy() for u in out['update']], float(out['steps'])))
    (u_a, n_a), (u_b, n_b) = updates
    expected = [
      w - (n_a * a + n_b * b) / (n_a + n_b)
      for w, a, b in zip(trainable, u_a, u_b, strict=True)
    ]
    tolerance = 2e-6
    for actual, want in zip(new.trainable, expected, strict=True):
      np.testing.assert_allclose(actual, want, rtol=0, atol=tolerance)
    # Training on a client model's own (other) frozen weights gives
    # another update: the comparison can tell.
    tf.keras.utils.set_random_seed(SEED + 2)
    other = fed_avg.make_client_trainer(config, config.build_model())
    out = other.train(
      trainable,
      fed_avg.make_client_dataset(
        tf.constant(folder.shard_paths('b')), keys[1], config
      ),
    )
    own = [u.numpy() for u in out['update']]
    assert _max_difference(own, u_b) > 100 * tolerance
