"""Tests for tff_brats.models.losses."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.models import losses

_S = 1e-5  # the default smoothing terms


def _volume(voxels, shape=(2, 2, 2)):
  """A [1, D, H, W, 1] float32 mask with ones at the given flat indices."""
  mask = np.zeros(int(np.prod(shape)), np.float32)
  mask[list(voxels)] = 1.0
  return mask.reshape(1, *shape, 1)


def _loss(y_true, y_pred, **kwargs):
  return float(losses.SoftDiceLoss(**kwargs)(y_true, y_pred))


# -------------------------------------------------------------- soft Dice ----


def test_perfect_prediction_gives_zero():
  target = _volume([0, 3, 5])
  # (2·3 + s) / (3 + 3 + s) = 1 exactly.
  assert _loss(target, target) == pytest.approx(0.0, abs=1e-7)


def test_disjoint_prediction_gives_one():
  # Σ t·p = 0: dice = s / (2 + 2 + s) = 2.5e-6.
  got = _loss(_volume([0, 1]), _volume([6, 7]))
  assert got == pytest.approx(1 - _S / (4 + _S), abs=1e-7)
  assert got > 0.99999


def test_empty_target_and_empty_prediction_give_zero():
  # (0 + s) / (0 + 0 + s) = 1: nothing to find and nothing found is perfect.
  empty = _volume([])
  assert _loss(empty, empty) == pytest.approx(0.0, abs=1e-7)


def test_empty_target_with_a_prediction_gives_about_one():
  # s / (0 + 1 + s): a false positive on an empty region costs ~1.
  got = _loss(_volume([]), _volume([4]))
  assert got == pytest.approx(1 - _S / (1 + _S), abs=1e-7)


def test_half_overlap_by_hand():
  # Target 4 voxels, prediction 4 voxels, 2 shared: 2·2 / (4 + 4) = 0.5.
  got = _loss(_volume([0, 1, 2, 3]), _volume([2, 3, 4, 5]))
  assert got == pytest.approx(1 - (4 + _S) / (8 + _S), abs=1e-7)
  assert got == pytest.approx(0.5, abs=1e-5)


def test_soft_probabilities_by_hand():
  # p = 0.5 everywhere on 8 voxels, target 2 voxels: Σ t·p = 1, Σ p = 4,
  # Σ t = 2, dice = (2 + s) / (6 + s) ≈ 1/3.
  got = _loss(_volume([0, 7]), np.full((1, 2, 2, 2, 1), 0.5, np.float32))
  assert got == pytest.approx(1 - (2 + _S) / (6 + _S), abs=1e-7)


def test_mean_over_channels_then_batch():
  # Sample 0: channel 0 perfect (0), channel 1 disjoint (~1).
  # Sample 1: channel 0 half overlap (0.5), channel 1 empty/empty (0).
  y_true = np.zeros((2, 2, 2, 2, 2), np.float32)
  y_pred = np.zeros_like(y_true)
  y_true[0, ..., 0] = _volume([0, 1])[0, ..., 0]
  y_pred[0, ..., 0] = _volume([0, 1])[0, ..., 0]
  y_true[0, ..., 1] = _volume([0])[0, ..., 0]
  y_pred[0, ..., 1] = _volume([7])[0, ..., 0]
  y_true[1, ..., 0] = _volume([0, 1, 2, 3])[0, ..., 0]
  y_pred[1, ..., 0] = _volume([2, 3, 4, 5])[0, ..., 0]
  per_channel = np.array(
    [[0.0, 1 - _S / (2 + _S)], [1 - (4 + _S) / (8 + _S), 0.0]]
  )
  loss = losses.SoftDiceLoss()
  np.testing.assert_allclose(
    loss.call(tf.constant(y_true), tf.constant(y_pred)).numpy(),
    per_channel.mean(axis=1),
    atol=1e-6,
  )
  assert float(loss(y_true, y_pred)) == pytest.approx(
    per_channel.mean(), abs=1e-6
  )


def test_smoothing_terms_are_used():
  # Σ t·p = 1, Σ t + Σ p = 3: (2 + 1) / (3 + 2) = 0.6 with smoothing 1 / 2.
  got = _loss(
    _volume([0, 1]), _volume([1]), smooth_numerator=1.0, smooth_denominator=2.0
  )
  assert got == pytest.approx(0.4, abs=1e-6)


def test_works_in_two_dimensions():
  # [B, H, W, C]: target 2 pixels, prediction 1 of them: 2 / 3.
  y_true = np.array([[[[1.0], [1.0]], [[0.0], [0.0]]]], np.float32)
  y_pred = np.array([[[[1.0], [0.0]], [[0.0], [0.0]]]], np.float32)
  assert _loss(y_true, y_pred) == pytest.approx(1 / 3, abs=1e-5)


@pytest.mark.parametrize('dtype', [tf.bfloat16, tf.float16])
def test_low_precision_inputs_are_computed_in_float32(dtype):
  # 0/1 masks are exact in any float type, but 1 - 10/17 is not: computed
  # in bfloat16 (8 significant bits) or float16 (11) it would be off by
  # about 1e-3 or 1e-4. Target 8 voxels, prediction 9, overlap 5.
  y_true = _volume(range(8), shape=(4, 4, 2))
  y_pred = _volume(range(3, 12), shape=(4, 4, 2))
  loss = losses.SoftDiceLoss()(
    tf.constant(y_true, dtype), tf.constant(y_pred, dtype)
  )
  assert loss.dtype == tf.float32
  assert float(loss) == pytest.approx(1 - (10 + _S) / (17 + _S), abs=1e-7)
  combined = losses.DiceBCELoss(bce_weight=0.0)(
    tf.constant(y_true, dtype), tf.constant(y_pred, dtype)
  )
  assert combined.dtype == tf.float32
  assert float(combined) == pytest.approx(float(loss), abs=1e-7)


def test_bool_targets_are_accepted():
  target = _volume([0, 3]).astype(bool)
  assert _loss(target, _volume([0, 3])) == pytest.approx(0.0, abs=1e-7)


def test_gradient_is_finite_on_empty_volumes():
  y_pred = tf.Variable(tf.zeros([1, 2, 2, 2, 1]))
  with tf.GradientTape() as tape:
    loss = losses.SoftDiceLoss()(tf.zeros([1, 2, 2, 2, 1]), y_pred)
  grad = tape.gradient(loss, y_pred).numpy()
  assert np.all(np.isfinite(grad))
  # d/dp of 1 - s / (Σp + s) at Σp = 0 is 1 / s for every voxel.
  np.testing.assert_allclose(grad, 1 / _S, rtol=1e-4)


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError, match='same shape'):
    losses.soft_dice(tf.zeros([1, 2, 2, 2, 3]), tf.zeros([1, 2, 2, 2, 2]))
  with pytest.raises(ValueError, match=r'\[batch, \*spatial, channels\]'):
    losses.soft_dice(tf.zeros([4, 3]), tf.zeros([4, 3]))


# ------------------------------------------------------------ Dice + BCE ----


def test_dice_bce_by_hand():
  # Two voxels: t = (1, 0), p = (0.9, 0.2).
  # Dice: Σ t·p = 0.9, Σ t + Σ p = 2.1, loss 1 - (1.8 + s) / (2.1 + s).
  # BCE: -(log 0.9 + log 0.8) / 2.
  y_true = np.array([1.0, 0.0], np.float32).reshape(1, 2, 1, 1, 1)
  y_pred = np.array([0.9, 0.2], np.float32).reshape(1, 2, 1, 1, 1)
  dice = 1 - (1.8 + _S) / (2.1 + _S)
  bce = -(math.log(0.9) + math.log(0.8)) / 2
  got = float(
    losses.DiceBCELoss(dice_weight=0.5, bce_weight=2.0)(y_true, y_pred)
  )
  assert got == pytest.approx(0.5 * dice + 2.0 * bce, abs=1e-6)
  only_dice = losses.DiceBCELoss(bce_weight=0.0)(y_true, y_pred)
  assert float(only_dice) == pytest.approx(_loss(y_true, y_pred), abs=1e-7)


def test_dice_bce_clips_certain_mistakes():
  # p = 0 where t = 1: log is clipped at epsilon, giving -log(1e-7) / 2.
  y_true = np.array([1.0, 0.0], np.float32).reshape(1, 2, 1, 1, 1)
  y_pred = np.zeros_like(y_true)
  got = float(losses.DiceBCELoss(dice_weight=0.0)(y_true, y_pred))
  assert np.isfinite(got)
  assert got == pytest.approx(-math.log(1e-7) / 2, rel=1e-3)


def test_dice_bce_mean_over_batch():
  rng = np.random.default_rng(0)
  y_true = (rng.uniform(size=(3, 2, 2, 2, 3)) > 0.5).astype(np.float32)
  y_pred = rng.uniform(0.05, 0.95, size=(3, 2, 2, 2, 3)).astype(np.float32)
  p = y_pred.astype(np.float64)
  bce = -(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)).mean(
    axis=(1, 2, 3, 4)
  )
  inter = (y_true * p).sum(axis=(1, 2, 3))
  total = y_true.sum(axis=(1, 2, 3)) + p.sum(axis=(1, 2, 3))
  dice = (1 - (2 * inter + _S) / (total + _S)).mean(axis=1)
  got = float(losses.DiceBCELoss()(y_true, y_pred))
  assert got == pytest.approx(float((dice + bce).mean()), abs=1e-5)


# --------------------------------------------------------- configuration ----


def test_configs_round_trip():
  for loss in (
    losses.SoftDiceLoss(smooth_numerator=0.0, smooth_denominator=1.0),
    losses.DiceBCELoss(dice_weight=0.3, bce_weight=0.7, epsilon=1e-6),
  ):
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = tf.keras.losses.deserialize(tf.keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == config
  assert losses.DiceBCELoss().get_config()['bce_weight'] == 1.0


@pytest.mark.parametrize(
  'factory,message',
  [
    (
      lambda: losses.SoftDiceLoss(smooth_denominator=0.0),
      r'smooth_denominator must be a positive number\. Found 0\.0\.',
    ),
    (
      lambda: losses.SoftDiceLoss(smooth_numerator=-1.0),
      r'smooth_numerator must be a non-negative number\. Found -1\.0\.',
    ),
    (
      lambda: losses.SoftDiceLoss(smooth_numerator=float('nan')),
      r'smooth_numerator must be a non-negative number\. Found nan\.',
    ),
    (
      lambda: losses.DiceBCELoss(dice_weight=-0.5),
      r'dice_weight must be a non-negative number\. Found -0\.5\.',
    ),
    (
      lambda: losses.DiceBCELoss(bce_weight='1'),
      r"bce_weight must be a non-negative number\. Found '1'\.",
    ),
    (
      lambda: losses.DiceBCELoss(epsilon=0.5),
      r'epsilon must be in \(0, 0\.5\)\. Found 0\.5\.',
    ),
  ],
)
def test_bad_arguments(factory, message):
  with pytest.raises(ValueError, match=message):
    factory()
