"""Tests of tff_brats.learning.client_training (plain TensorFlow, no TFF)."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from tff_brats.data import pipeline
from tff_brats.learning import client_training
from tff_brats.models import losses
from tff_brats.models import metrics
from tff_brats.models import segresnet

# The smallest SegResNet with a skip connection (two levels): a trainer's
# first trace takes a few seconds instead of ~15 s for the default depth.
MODEL_CONFIG = dict(init_filters=8, blocks_down=(1, 1), blocks_up=(1,))
CROP = (16, 16, 16)
LEARNING_RATE = 1e-3
NUM_BATCHES = 3
# Adam's step is at most lr·(1 − β1)/√(1 − β2) per coordinate when
# 1 − β1 > √(1 − β2) (Kingma & Ba 2015, section 2.1); Keras' defaults
# β1 = 0.9, β2 = 0.999 give 3.16·lr.
ADAM_STEP_BOUND = LEARNING_RATE * 0.1 / np.sqrt(0.001)


def _build_model(seed=0, **overrides):
  tf.keras.utils.set_random_seed(seed)
  model = segresnet.SegResNet(**{**MODEL_CONFIG, **overrides})
  model.build((None, *CROP, 4))
  return model


def _weights(model):
  return [v.numpy() for v in model.trainable_variables]


def _batches(num_batches=NUM_BATCHES, *, first_case=0, key_offset=0):
  """Batches (images, regions, key) of brain-like cases, batch size 1."""
  images, regions = [], []
  for k in range(num_batches):
    image, region = testing_utils.make_case(CROP, seed=first_case + k)
    images.append(pipeline.normalize_intensity(image).numpy()[np.newaxis])
    regions.append(region.astype(np.float32)[np.newaxis])
  shape = (0, 1, *CROP)
  images = np.stack(images) if images else np.zeros((*shape, 4), np.float32)
  regions = np.stack(regions) if regions else np.zeros((*shape, 3), np.float32)
  keys = np.arange(2 * num_batches, dtype=np.int64).reshape(-1, 2) + key_offset
  return images, regions, keys


def _dataset(batches, *, with_keys=True):
  images, regions, keys = batches
  if with_keys:
    return tf.data.Dataset.from_tensor_slices((images, regions, keys))
  return tf.data.Dataset.from_tensor_slices((images, regions))


def _numpy(output):
  return {
    key: [u.numpy() for u in value] if key == 'update' else value.numpy()
    for key, value in output.items()
  }


def _assert_outputs_equal(a, b):
  assert a.keys() == b.keys()
  for x, y in zip(a['update'], b['update'], strict=True):
    np.testing.assert_array_equal(x, y)
  for key in client_training.OUTPUT_KEYS:
    np.testing.assert_array_equal(a[key], b[key])


def _max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope='module')
def trainer():
  return client_training.ClientTrainer(
    _build_model(seed=0), learning_rate=LEARNING_RATE
  )


@pytest.fixture(scope='module')
def initial(trainer):
  return _weights(trainer.model)


@pytest.fixture(scope='module')
def batches():
  return _batches()


class TestTrain:
  def test_output_structure(self, trainer, initial, batches):
    out = trainer.train(initial, _dataset(batches))
    assert tuple(out) == ('update', *client_training.OUTPUT_KEYS)
    assert [u.shape for u in out['update']] == [w.shape for w in initial]
    assert {u.dtype for u in out['update']} == {tf.float32}
    assert out['steps'].dtype == tf.float32 and out['steps'].shape == []
    assert out['loss_sum'].dtype == tf.float32
    for key in ('dice_intersection', 'dice_predicted', 'dice_target'):
      assert out[key].dtype == tf.float64 and out[key].shape == [3]
    assert out['non_finite'].dtype == tf.int32
    assert out['non_finite'] == 0

  def test_update_is_initial_minus_trained(self, trainer, initial, batches):
    # Start the model far from `initial`: train must load the given weights.
    for variable, value in zip(
      trainer.model.trainable_variables, initial, strict=True
    ):
      variable.assign(value + 1.0)
    out = _numpy(trainer.train(initial, _dataset(batches)))
    trained = _weights(trainer.model)
    for update, w, t in zip(out['update'], initial, trained, strict=True):
      np.testing.assert_array_equal(update, w - t)
    # Every variable moved, by at most NUM_BATCHES Adam steps (a model that
    # kept its +1 offset would have updates of -1).
    assert all(np.any(u != 0) for u in out['update'])
    largest = max(float(np.max(np.abs(u))) for u in out['update'])
    assert largest <= NUM_BATCHES * ADAM_STEP_BOUND * (1 + 1e-6)
    assert out['steps'] == NUM_BATCHES

  @pytest.mark.parametrize('loss', client_training.LOSSES)
  def test_matches_a_manual_training_loop(self, loss, batches):
    # The trainer against an eager loop with an identical fresh model and
    # optimiser: same losses, weights, update and Dice counts.
    initial = _weights(_build_model(seed=1))
    trainer = client_training.ClientTrainer(
      _build_model(seed=2), learning_rate=LEARNING_RATE, loss=loss
    )
    out = _numpy(trainer.train(initial, _dataset(batches)))

    model = _build_model(seed=3)
    for variable, value in zip(model.trainable_variables, initial, strict=True):
      variable.assign(value)
    optimizer = tf.keras.optimizers.Adam(LEARNING_RATE)
    loss_fn = client_training.make_loss(loss)
    dice = metrics.PooledDice()
    step_losses = []
    for images, regions, key in _dataset(batches):
      model.dropout.set_key(key)
      with tf.GradientTape() as tape:
        probabilities = model(images, training=True)
        step_loss = loss_fn(regions, probabilities)
      gradients = tape.gradient(step_loss, model.trainable_variables)
      optimizer.apply_gradients(
        zip(gradients, model.trainable_variables, strict=True)
      )
      dice.update_state(regions, probabilities)
      step_losses.append(float(step_loss))

    assert out['steps'] == len(step_losses) == NUM_BATCHES
    assert out['loss_sum'] == pytest.approx(sum(step_losses), rel=1e-6)
    # Graph and eager execution round differently in the last bits.
    trained = _weights(model)
    for variable, expected in zip(
      trainer.model.trainable_variables, trained, strict=True
    ):
      np.testing.assert_allclose(variable.numpy(), expected, rtol=0, atol=1e-6)
    for update, w, t in zip(out['update'], initial, trained, strict=True):
      np.testing.assert_allclose(update, w - t, rtol=0, atol=1e-6)
    # Thresholded voxel counts of the same predictions (none of them within
    # rounding of the 0.5 threshold, so the counts agree exactly).
    np.testing.assert_array_equal(out['dice_intersection'], dice.intersection)
    np.testing.assert_array_equal(out['dice_predicted'], dice.predicted)
    np.testing.assert_array_equal(out['dice_target'], dice.target)
    # The targets are the cases' region voxel counts.
    np.testing.assert_array_equal(
      out['dice_target'], np.sum(batches[1], axis=(0, 1, 2, 3, 4))
    )
    assert np.all(out['dice_target'] > 0)

  def test_optimizer_restarts_every_call(self, trainer, initial, batches):
    first = _numpy(trainer.train(initial, _dataset(batches)))
    assert trainer.optimizer.iterations.numpy() == NUM_BATCHES
    # Another client's data in between must leave nothing behind either.
    other = _batches(first_case=10, key_offset=100)
    trainer.train([w + 0.01 for w in initial], _dataset(other))
    second = _numpy(trainer.train(initial, _dataset(batches)))
    assert trainer.optimizer.iterations.numpy() == NUM_BATCHES
    _assert_outputs_equal(first, second)
    # With Adam's moments carried over, the second call would differ.
    assert any(np.any(u != 0) for u in first['update'])

  def test_empty_dataset(self, trainer, initial):
    out = _numpy(trainer.train(initial, _dataset(_batches(0))))
    assert out['steps'] == 0
    assert out['loss_sum'] == 0
    assert out['non_finite'] == 0
    for update in out['update']:
      np.testing.assert_array_equal(update, 0.0)
    for key in ('dice_intersection', 'dice_predicted', 'dice_target'):
      np.testing.assert_array_equal(out[key], [0.0, 0.0, 0.0])
    for variable, w in zip(
      trainer.model.trainable_variables, initial, strict=True
    ):
      np.testing.assert_array_equal(variable.numpy(), w)


class TestDropoutKeys:
  def test_same_keys_same_update(self, trainer, initial, batches):
    # The layer's own key is different before each call; the batch keys
    # replace it.
    trainer.model.dropout.set_key([0, 1])
    first = _numpy(trainer.train(initial, _dataset(batches)))
    trainer.model.dropout.set_key([5, 6])
    second = _numpy(trainer.train(initial, _dataset(batches)))
    _assert_outputs_equal(first, second)

  def test_different_keys_different_update(self, trainer, initial, batches):
    # Same images and regions, other keys. With rate 0.2 on 8 channels a
    # step's masks coincide for two keys with probability 0.68^8 ≈ 0.05, all
    # three steps' with about 1e-4; the keys are fixed, so the outcome is
    # deterministic.
    images, regions, keys = batches
    first = _numpy(trainer.train(initial, _dataset(batches)))
    second = _numpy(
      trainer.train(initial, _dataset((images, regions, keys + 1000)))
    )
    assert _max_difference(first['update'], second['update']) > 1e-5
    assert first['steps'] == second['steps'] == NUM_BATCHES

  def test_keys_do_not_matter_without_dropout(self, batches):
    model = _build_model(seed=0, dropout_rate=0.0)
    trainer = client_training.ClientTrainer(model, learning_rate=LEARNING_RATE)
    initial = _weights(model)
    images, regions, keys = batches
    first = _numpy(trainer.train(initial, _dataset(batches)))
    second = _numpy(
      trainer.train(initial, _dataset((images, regions, keys + 1000)))
    )
    _assert_outputs_equal(first, second)

  def test_last_batch_key_seeds_the_layer(self, trainer, initial, batches):
    trainer.train(initial, _dataset(batches))
    last = batches[2][-1]
    # ChannelDropout replaces its key by a split of itself after each use.
    expected = tf.random.experimental.stateless_split(last, 1)[0]
    np.testing.assert_array_equal(trainer.model.dropout.key.numpy(), expected)

  def test_without_keys_the_layer_keys_advance(self, trainer, initial, batches):
    start = np.array([3, 4], np.int64)
    trainer.model.dropout.set_key(start)
    first = _numpy(trainer.train(initial, _dataset(batches, with_keys=False)))
    expected = tf.constant(start)
    for _ in range(NUM_BATCHES):
      expected = tf.random.experimental.stateless_split(expected, 1)[0]
    np.testing.assert_array_equal(trainer.model.dropout.key.numpy(), expected)
    # The layer's key is then the only source of the masks.
    trainer.model.dropout.set_key(start)
    again = _numpy(trainer.train(initial, _dataset(batches, with_keys=False)))
    _assert_outputs_equal(first, again)
    third = _numpy(trainer.train(initial, _dataset(batches, with_keys=False)))
    assert _max_difference(first['update'], third['update']) > 1e-5


class TestNonFinite:
  @pytest.mark.parametrize('where', ['images', 'last_batch', 'weight'])
  def test_zeroed_and_flagged(self, trainer, initial, batches, where):
    images, regions, keys = batches
    initial = list(initial)
    if where == 'images':
      images = np.full_like(images, np.nan)
    elif where == 'last_batch':
      images = images.copy()
      images[-1, 0, 0, 0, 0, 0] = np.nan
    else:
      initial[0] = initial[0].copy()
      initial[0].flat[0] = np.nan
    out = _numpy(trainer.train(initial, _dataset((images, regions, keys))))
    assert out['non_finite'] == 1
    for update in out['update']:
      np.testing.assert_array_equal(update, 0.0)
    # The steps still count (the client keeps its aggregation weight).
    assert out['steps'] == NUM_BATCHES
    # The model's own weights are what training made of them.
    assert not np.all(np.isfinite(trainer.model.trainable_variables[0]))


class TestArguments:
  def test_wrong_number_of_initial_weights(self, trainer, initial, batches):
    n = len(initial)
    message = (
      f'initial_weights must have {n} tensors, one per trainable variable. '
      f'Found {n - 1}.'
    )
    with pytest.raises(ValueError, match=re.escape(message)):
      trainer.train(initial[:-1], _dataset(batches))

  def test_unbuilt_model(self):
    with pytest.raises(ValueError, match='model must be built'):
      client_training.ClientTrainer(
        segresnet.SegResNet(**MODEL_CONFIG), learning_rate=LEARNING_RATE
      )

  @pytest.mark.parametrize(
    'learning_rate', [0, -1e-3, float('nan'), float('inf'), '0.1', True]
  )
  def test_bad_learning_rate(self, trainer, learning_rate):
    message = (
      f'learning_rate must be a positive number. Found {learning_rate!r}.'
    )
    with pytest.raises(ValueError, match=re.escape(message)):
      client_training.ClientTrainer(trainer.model, learning_rate=learning_rate)

  def test_unknown_loss(self, trainer):
    message = "loss must be one of ('dice', 'dice_bce'). Found 'focal'."
    with pytest.raises(ValueError, match=re.escape(message)):
      client_training.ClientTrainer(
        trainer.model, learning_rate=LEARNING_RATE, loss='focal'
      )
    with pytest.raises(ValueError, match=re.escape(message)):
      client_training.make_loss('focal')

  def test_unknown_precision(self, trainer):
    with pytest.raises(ValueError, match="precision must be one of .* 'fp8'"):
      client_training.ClientTrainer(
        trainer.model, learning_rate=LEARNING_RATE, precision='fp8'
      )

  def test_make_loss(self):
    assert isinstance(client_training.make_loss('dice'), losses.SoftDiceLoss)
    assert isinstance(client_training.make_loss('dice_bce'), losses.DiceBCELoss)


class TestPooledDice:
  def test_hand_computed(self):
    # TC: 2·3/(4 + 4); WT: nothing predicted or present, 1 by convention;
    # ET: predicted but absent, 0.
    assert client_training.pooled_dice([3, 0, 0], [4, 0, 5], [4, 0, 0]) == [
      0.75,
      1.0,
      0.0,
    ]
    assert client_training.pooled_dice(
      [1.0, 2.0, 3.0], [1.0, 4.0, 3.0], [1.0, 2.0, 5.0]
    ) == pytest.approx([1.0, 4.0 / 6.0, 6.0 / 8.0])

  def test_agrees_with_the_metric(self):
    rng = np.random.default_rng(0)
    y_true = (rng.uniform(size=(2, 6, 6, 6, 3)) < 0.3).astype(np.float32)
    y_pred = rng.uniform(size=(2, 6, 6, 6, 3)).astype(np.float32)
    y_true[..., 2] = 0.0  # ET absent ...
    y_pred[..., 2] = 0.1  # ... and not predicted: Dice 1
    metric = metrics.PooledDice()
    metric.update_state(y_true, y_pred)
    dice = client_training.pooled_dice(
      metric.intersection.numpy(),
      metric.predicted.numpy(),
      metric.target.numpy(),
    )
    assert dice[2] == 1.0
    for region, value in zip(('TC', 'WT', 'ET'), dice, strict=True):
      single = metrics.PooledDice(region)
      single.update_state(y_true, y_pred)
      assert value == pytest.approx(float(single.result()), rel=1e-6)

  def test_lengths_must_match(self):
    with pytest.raises(ValueError):
      client_training.pooled_dice([1, 2], [1, 2, 3], [1, 2, 3])
