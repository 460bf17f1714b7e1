"""Dice metrics that TFF can sum across clients and finalise once.

`tff.learning.models.from_keras_model` reports a Keras metric's variables
as its unfinalized values; the default metrics aggregator
(`tff.learning.metrics.sum_then_finalize`, or `SumThenFinalizeFactory` in
`build_fed_eval`) sums every variable over the clients with
`tff.federated_sum` and calls `result()` once, on a fresh metric built with
`from_config(get_config())`, at the server. A metric aggregates correctly
only if its variables are sums. `PooledDice` keeps, per region, three counts
of thresholded voxels: |P ∩ T|, |P| and |T| (P the prediction, T the target),
so the aggregated value is the Dice of all voxels of all clients pooled

    Dice = 2 Σ|P ∩ T| / (Σ|P| + Σ|T|),

a "global" Dice over the data set. It is not the mean over cases of per-case
Dice (what BraTS reports; see `tff_brats.evaluation.scoring`): large tumours
weigh more, and a case with an empty region adds nothing rather than a 0
or a 1. When a region is empty in both predictions and targets over
everything seen (all counts 0) its Dice is 1, the convention of
`tff_brats.evaluation.scoring`.

Counts are float64 variables, exact up to 2**53 voxels; each case's counts
are taken in float32 first, exact for volumes below 2**24 voxels (a whole
240×240×155 BraTS volume has 8.9 million). For
`tff.learning.metrics.secure_sum_then_finalize`, whose default range clips
floats to [0, 2**20 - 1], give the counts a `metric_value_ranges` that fits.

Plain TensorFlow: this module never imports TFF.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tff_brats.data import layouts
from tff_brats.utils import checks

DEFAULT_THRESHOLD = 0.5


@tf.keras.utils.register_keras_serializable(package='tff_brats')
class PooledDice(tf.keras.metrics.Metric):
  """Dice of thresholded predictions over all voxels seen, per region.

  Inputs are `y_true` and `y_pred` of shape `[B, D, H, W, 3]` (any rank >= 2
  works: every axis but the first and the last is a voxel axis), channels in
  (TC, WT, ET) order (`layouts.REGIONS`). A predicted voxel is in a region
  when its probability is at least `threshold` (MONAI's
  `AsDiscrete(threshold=...)`, the rule of `tff_brats.inference`); a target
  voxel when its value is above 0.5.

  The result is the mean over `regions` of each region's pooled Dice (see
  the module docstring); with one region it is that region's pooled Dice.
  Variables (in this order, each of shape `[len(regions)]`, float64):
  `intersection`, `predicted`, `target`.
  """

  def __init__(
    self,
    regions: Sequence[str] | str = layouts.REGIONS,
    threshold: float = DEFAULT_THRESHOLD,
    name: str | None = None,
    dtype: Any = None,
  ):
    """Creates the metric.

    Args:
      regions: Region names from `layouts.REGIONS` (or one name) whose pooled
        Dice is averaged.
      threshold: Probability from which on a predicted voxel is in a
        region (`>=`), in (0, 1).
      name: Metric name; by default `dice_<R>` for one region R and
        `dice_mean` for all three (otherwise `dice_mean_<R1>_<R2>`).
      dtype: Dtype of `result()`; float32 when None.
    """
    regions = _check_regions(regions)
    if not checks.is_number(threshold) or not 0 < threshold < 1:
      raise ValueError(f'threshold must be in (0, 1). Found {threshold!r}.')
    super().__init__(name=name or _default_name(regions), dtype=dtype)
    self._regions = regions
    self._channels = [layouts.REGIONS.index(r) for r in regions]
    self._threshold = float(threshold)
    shape = (len(regions),)
    self.intersection = self.add_weight(
      'intersection', shape=shape, initializer='zeros', dtype=tf.float64
    )
    self.predicted = self.add_weight(
      'predicted', shape=shape, initializer='zeros', dtype=tf.float64
    )
    self.target = self.add_weight(
      'target', shape=shape, initializer='zeros', dtype=tf.float64
    )

  @property
  def regions(self) -> tuple[str, ...]:
    return self._regions

  @property
  def threshold(self) -> float:
    return self._threshold

  def update_state(self, y_true, y_pred, sample_weight=None):
    """Adds the thresholded voxel counts of a batch.

    Args:
      y_true: Targets `[B, ..., 3]`, 0/1 values.
      y_pred: Probabilities `[B, ..., 3]`, the shape of `y_true`.
      sample_weight: Must be None (weights would make the counts non-integer
        and the pooled Dice ill-defined).
    """
    if sample_weight is not None:
      raise ValueError(
        f'sample_weight must be None for {type(self).__name__}. '
        f'Found {sample_weight!r}.'
      )
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    _check_shapes(y_true.shape, y_pred.shape)
    predicted = tf.cast(
      tf.gather(tf.cast(y_pred, tf.float32), self._channels, axis=-1)
      >= self._threshold,
      tf.float32,
    )
    target = tf.cast(
      tf.gather(tf.cast(y_true, tf.float32), self._channels, axis=-1) > 0.5,
      tf.float32,
    )
    self.intersection.assign_add(_pooled_count(predicted * target))
    self.predicted.assign_add(_pooled_count(predicted))
    self.target.assign_add(_pooled_count(target))

  def result(self):
    denominator = self.predicted + self.target
    per_region = tf.where(
      denominator > 0,
      tf.math.divide_no_nan(2.0 * self.intersection, denominator),
      tf.ones_like(denominator),
    )
    return tf.cast(tf.reduce_mean(per_region), self.dtype)

  def reset_state(self):
    for variable in self.variables:
      variable.assign(tf.zeros_like(variable))

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'regions': list(self._regions),
      'threshold': self._threshold,
    }


def segmentation_metrics(
  threshold: float = DEFAULT_THRESHOLD,
) -> list[PooledDice]:
  """The metrics the trainers report: pooled Dice of TC, WT, ET and mean.

  Call it inside a TFF `model_fn` (TFF needs new metric objects for every
  model it builds).

  Args:
    threshold: Probability from which on a predicted voxel is in a region
      (`>=`).

  Returns:
    New metrics named `dice_TC`, `dice_WT`, `dice_ET` and `dice_mean` (the
    mean of the three pooled Dice values).
  """
  per_region = [PooledDice(region, threshold) for region in layouts.REGIONS]
  return [*per_region, PooledDice(layouts.REGIONS, threshold)]


def _check_regions(regions: Sequence[str] | str) -> tuple[str, ...]:
  names = (regions,) if isinstance(regions, str) else regions
  try:
    names = tuple(names)
  except TypeError:
    names = ()
  if (
    not names
    or any(name not in layouts.REGIONS for name in names)
    or len(set(names)) != len(names)
  ):
    raise ValueError(
      f'regions must be distinct names from {layouts.REGIONS}. '
      f'Found {regions!r}.'
    )
  return names


def _default_name(regions: tuple[str, ...]) -> str:
  if len(regions) == 1:
    return f'dice_{regions[0]}'
  if regions == layouts.REGIONS:
    return 'dice_mean'
  return 'dice_mean_' + '_'.join(regions)


def _check_shapes(true_shape: tf.TensorShape, pred_shape: tf.TensorShape):
  if pred_shape.rank is None or pred_shape.rank < 2:
    raise ValueError(
      f'y_pred must have a batch and a channel axis [B, ..., 3]. '
      f'Found shape {pred_shape}.'
    )
  if pred_shape[-1] is not None and pred_shape[-1] != len(layouts.REGIONS):
    raise ValueError(
      f'y_pred must have {len(layouts.REGIONS)} channels {layouts.REGIONS} '
      f'in the last axis. Found shape {pred_shape}.'
    )
  if not true_shape.is_compatible_with(pred_shape):
    raise ValueError(
      f'y_true must have the shape of y_pred {pred_shape}. Found {true_shape}.'
    )


def _pooled_count(mask: tf.Tensor) -> tf.Tensor:
  """Per-channel count of a 0/1 float32 `[B, ..., C]` over all but C."""
  voxel_axes = list(range(1, mask.shape.rank - 1))
  # float32 sums of 0/1 values are exact below 2**24 per case; the batch sum
  # is taken in float64.
  per_case = tf.reduce_sum(mask, axis=voxel_axes)
  return tf.reduce_sum(tf.cast(per_case, tf.float64), axis=0)
