"""Segmentation losses over sigmoid region channels: soft Dice, Dice + BCE.

Both take `y_true` (0/1 region masks, any real or bool dtype) and `y_pred`
(probabilities in [0, 1], e.g. `SegResNet`'s sigmoid outputs), shaped
`[B, *spatial, C]` channels-last, and compute in float32 whatever their
dtypes (float16/bfloat16 sums over a volume would lose the count).

Soft Dice (Milletari et al. 2016, V-Net; as MONAI's `DiceLoss(sigmoid=False,
squared_pred=False, batch=False)`, the loss of the reference BraTS recipes),
per sample `b` and channel `c`, with sums over the voxels:

    dice[b, c] = (2 Σ t·p + smooth_numerator) / (Σ t + Σ p + smooth_denominator)
    loss       = mean over b and c of (1 - dice[b, c])

With the defaults `smooth_numerator = smooth_denominator = 1e-5` an empty
target with an empty prediction gives dice = 1 (loss 0), an empty target
with a non-empty prediction gives dice ≈ 0 (loss ≈ 1), and otherwise the
smoothing changes the value by about 1e-5 / (Σ t + Σ p).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tff_brats.utils import checks

_PACKAGE = 'tff_brats'


@tf.keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftDiceLoss(tf.keras.losses.Loss):
  """Soft Dice loss, per sample and channel, averaged (see module doc).

  `call` returns the per-sample loss `[B]` (mean over channels); Keras'
  default reduction then averages over the batch.
  """

  def __init__(
    self,
    smooth_numerator: float = 1e-5,
    smooth_denominator: float = 1e-5,
    reduction: str = tf.keras.losses.Reduction.AUTO,
    name: str = 'soft_dice_loss',
  ):
    """Initialises the loss.

    Args:
      smooth_numerator: Added to `2 Σ t·p` (>= 0).
      smooth_denominator: Added to `Σ t + Σ p` (> 0, so an empty target and
        prediction divide by it rather than by 0).
      reduction: Keras reduction over the batch.
      name: Loss name.

    Raises:
      ValueError: A smoothing term is out of range.
    """
    super().__init__(reduction=reduction, name=name)
    checks.check_non_negative_number('smooth_numerator', smooth_numerator)
    checks.check_positive_number('smooth_denominator', smooth_denominator)
    self.smooth_numerator = float(smooth_numerator)
    self.smooth_denominator = float(smooth_denominator)

  def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(
      1.0
      - soft_dice(
        y_true, y_pred, self.smooth_numerator, self.smooth_denominator
      ),
      axis=-1,
    )

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'smooth_numerator': self.smooth_numerator,
      'smooth_denominator': self.smooth_denominator,
    }


@tf.keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceBCELoss(tf.keras.losses.Loss):
  """`dice_weight · soft Dice + bce_weight · binary cross-entropy`.

  Per sample: the soft Dice loss above (mean over channels) plus the binary
  cross-entropy averaged over voxels and channels,

      bce = mean over voxels and c of -(t log p + (1 - t) log(1 - p)),

  with `p` clipped to `[epsilon, 1 - epsilon]` (the inputs are
  probabilities, as Keras' `binary_crossentropy(from_logits=False)`).
  MONAI's `DiceCELoss` is the same with both weights 1, on logits.
  """

  def __init__(
    self,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    smooth_numerator: float = 1e-5,
    smooth_denominator: float = 1e-5,
    epsilon: float = 1e-7,
    reduction: str = tf.keras.losses.Reduction.AUTO,
    name: str = 'dice_bce_loss',
  ):
    """Initialises the loss.

    Args:
      dice_weight: Weight of the soft Dice term (>= 0).
      bce_weight: Weight of the cross-entropy term (>= 0).
      smooth_numerator: See `SoftDiceLoss`.
      smooth_denominator: See `SoftDiceLoss`.
      epsilon: Probability clipping of the cross-entropy, in (0, 0.5).
      reduction: Keras reduction over the batch.
      name: Loss name.

    Raises:
      ValueError: An argument is out of range.
    """
    super().__init__(reduction=reduction, name=name)
    checks.check_non_negative_number('dice_weight', dice_weight)
    checks.check_non_negative_number('bce_weight', bce_weight)
    checks.check_non_negative_number('smooth_numerator', smooth_numerator)
    checks.check_positive_number('smooth_denominator', smooth_denominator)
    if not checks.is_number(epsilon) or not 0 < epsilon < 0.5:
      raise ValueError(f'epsilon must be in (0, 0.5). Found {epsilon!r}.')
    self.dice_weight = float(dice_weight)
    self.bce_weight = float(bce_weight)
    self.smooth_numerator = float(smooth_numerator)
    self.smooth_denominator = float(smooth_denominator)
    self.epsilon = float(epsilon)

  def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    dice = soft_dice(
      y_true, y_pred, self.smooth_numerator, self.smooth_denominator
    )
    dice_loss = tf.reduce_mean(1.0 - dice, axis=-1)
    y_true = tf.cast(y_true, tf.float32)
    p = tf.clip_by_value(
      tf.cast(y_pred, tf.float32), self.epsilon, 1.0 - self.epsilon
    )
    bce = -(y_true * tf.math.log(p) + (1.0 - y_true) * tf.math.log(1.0 - p))
    axes = list(range(1, bce.shape.rank))
    return self.dice_weight * dice_loss + self.bce_weight * tf.reduce_mean(
      bce, axis=axes
    )

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'dice_weight': self.dice_weight,
      'bce_weight': self.bce_weight,
      'smooth_numerator': self.smooth_numerator,
      'smooth_denominator': self.smooth_denominator,
      'epsilon': self.epsilon,
    }


def soft_dice(
  y_true: tf.Tensor,
  y_pred: tf.Tensor,
  smooth_numerator: float = 1e-5,
  smooth_denominator: float = 1e-5,
) -> tf.Tensor:
  """Soft Dice coefficient per sample and channel, in float32.

  Args:
    y_true: `[B, *spatial, C]` masks (cast to float32).
    y_pred: `[B, *spatial, C]` probabilities (cast to float32).
    smooth_numerator: Added to `2 Σ t·p`.
    smooth_denominator: Added to `Σ t + Σ p`.

  Returns:
    `[B, C]`: `(2 Σ t·p + smooth_numerator) / (Σ t + Σ p + smooth_denominator)`
    with sums over the spatial axes.

  Raises:
    ValueError: The shapes differ or the rank is unknown or below 3.
  """
  y_true = tf.cast(y_true, tf.float32)
  y_pred = tf.cast(y_pred, tf.float32)
  rank = y_pred.shape.rank
  if rank is None or rank < 3:
    raise ValueError(
      'y_pred must be [batch, *spatial, channels] with a known rank. '
      f'Found shape {y_pred.shape}.'
    )
  if not y_true.shape.is_compatible_with(y_pred.shape):
    raise ValueError(
      f'y_true and y_pred must have the same shape. Found {y_true.shape} '
      f'and {y_pred.shape}.'
    )
  axes = list(range(1, rank - 1))
  intersection = tf.reduce_sum(y_true * y_pred, axis=axes)
  total = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(y_pred, axis=axes)
  return (2.0 * intersection + smooth_numerator) / (total + smooth_denominator)
