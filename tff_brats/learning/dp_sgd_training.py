"""One client's round of patient-level DP-SGD, in plain TensorFlow (no TFF).

The DP-SGD counterpart of `client_training.ClientTrainer` (same update,
sign convention and outputs), for the `dp_sgd` mechanism
(`tff_brats.mechanisms.dp_sgd`; the mathematics in
`tff_brats.privacy.dp_sgd`):

* `make_dp_sgd_dataset(shard_paths, data_key, options, ...)`: T =
  `local_steps` steps; each step's lot is a secret Poisson sample of the
  client's cases with probability q (`dp_sgd.poisson_sample`), each sampled
  case gives one element with its `crops_per_case` crops, and a marker
  element ends every step (`pipeline.make_lot_dataset`). Every element
  also carries the step's noise key and the case's dropout key.
* `DpSgdTrainer.train(initial_weights, dataset)`: for each case of a lot,
  the gradient of its loss (the mean over its crops) is clipped to L2 norm
  C (tensorflow_privacy's `GaussianSumQuery`); at a marker the lot's sum
  gets N(0, (zC)²) noise, is divided by the expected lot size q·n and is
  applied by the client optimiser (Adam, restarted every round, as in
  `ClientTrainer`). A case's non-finite gradient counts as zero (its
  contribution stays within the clip; a non-finite value must not stop a
  step, which would reveal that one case).

The keys. The lot and the noise are drawn from the client's privacy key:
fresh operating-system entropy on every call (`randomness.fresh_seed`), or,
with a `noise_seed` (experiments only, no guarantee), a function of the
round's data key and that seed. Crops and augmentation use the data key as
`ClientTrainer`'s do (`fed_avg.client_data_key`). The step weight sent with
the update is T, the same for every client and round, so it reveals nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
import dataclasses

import tensorflow as tf

from tff_brats.data import pipeline
from tff_brats.learning import client_training
from tff_brats.models import precision as precision_lib
from tff_brats.privacy import dp_sgd
from tff_brats.privacy import randomness
from tff_brats.utils import checks

# Streams folded into a client's data key.
_CROP_STREAM = 2
_DROPOUT_STREAM = 3


@dataclasses.dataclass(frozen=True)
class DpSgdOptions:
  """What every client's DP-SGD does in a round.

  Attributes:
    noise_multiplier: z >= 0 (noise stddev zC on each lot's sum).
    l2_norm_clip: C > 0, the L2 bound of one case's gradient.
    sampling_probability: q in (0, 1], each case's chance to join a lot.
    local_steps: T >= 1 steps per round.
    noise_seed: None (fresh lots and noise) or an int (reproducible, no
      guarantee).
  """

  noise_multiplier: float
  l2_norm_clip: float
  sampling_probability: float
  local_steps: int
  noise_seed: int | None = None

  def __post_init__(self):
    dp_sgd.check_parameters(
      noise_multiplier=self.noise_multiplier,
      l2_norm_clip=self.l2_norm_clip,
      sampling_probability=self.sampling_probability,
      local_steps=self.local_steps,
    )
    if self.noise_seed is not None:
      checks.check_non_negative_int('noise_seed', self.noise_seed)


def element_spec(
  crop_size: Sequence[int], crops_per_case: int
) -> tuple[tf.TensorSpec, ...]:
  """The element spec of `make_dp_sgd_dataset`."""
  return (
    *pipeline.lot_element_spec(crop_size, crops_per_case)[:5],
    tf.TensorSpec([2], tf.int64),
    tf.TensorSpec([2], tf.int64),
  )


def privacy_key(data_key: tf.Tensor, noise_seed: int | None) -> tf.Tensor:
  """The client's secret key of a round (see the module docstring)."""
  if noise_seed is None:
    return randomness.fresh_seed()
  return tf.random.experimental.stateless_fold_in(
    tf.convert_to_tensor(data_key, tf.int64),
    tf.constant(noise_seed, tf.int64),
  )


def make_dp_sgd_dataset(
  shard_paths: tf.Tensor,
  data_key: tf.Tensor,
  options: DpSgdOptions,
  *,
  crop_size: Sequence[int],
  crops_per_case: int,
  tumour_crop_probability: float,
) -> tf.data.Dataset:
  """A client's round of lots (see the module docstring).

  Elements: `(step, is_case, images [K, d, h, w, 4], regions [K, d, h, w,
  3], num_cases, noise_key [2], dropout_key [2])`, K = `crops_per_case`.
  """
  data_key = tf.convert_to_tensor(data_key, tf.int64)
  secret = privacy_key(data_key, options.noise_seed)
  sampling = randomness.substream(secret, dp_sgd.SAMPLING_STREAM)
  noise = randomness.substream(secret, dp_sgd.NOISE_STREAM)
  q = options.sampling_probability

  def lot_fn(step, num_cases):
    return dp_sgd.poisson_sample(
      tf.random.experimental.stateless_fold_in(sampling, step), num_cases, q
    )

  dataset = pipeline.make_lot_dataset(
    shard_paths,
    num_steps=options.local_steps,
    lot_fn=lot_fn,
    seed=randomness.substream(data_key, _CROP_STREAM),
    crop_size=crop_size,
    crops_per_case=crops_per_case,
    tumour_crop_probability=tumour_crop_probability,
  )
  dropout = randomness.substream(data_key, _DROPOUT_STREAM)

  def with_keys(step, is_case, images, regions, num_cases, index):
    noise_key = tf.random.experimental.stateless_fold_in(noise, step)
    dropout_key = tf.random.experimental.stateless_fold_in(
      tf.random.experimental.stateless_fold_in(dropout, step), index
    )
    return (
      step,
      is_case,
      images,
      regions,
      num_cases,
      tf.cast(noise_key, tf.int64),
      tf.cast(dropout_key, tf.int64),
    )

  return dataset.map(with_keys)


class DpSgdTrainer(client_training.ClientTrainer):
  """`ClientTrainer` with DP-SGD steps over Poisson lots."""

  def __init__(
    self,
    model: tf.keras.Model,
    options: DpSgdOptions,
    *,
    learning_rate: float,
    loss: str = 'dice_bce',
    precision: str = precision_lib.FLOAT32,
  ):
    """Configures the trainer (see `ClientTrainer`).

    Args:
      model: A built Keras model; its trainable variables are overwritten.
      options: The DP-SGD parameters.
      learning_rate: The client Adam's learning rate.
      loss: One of `client_training.LOSSES`.
      precision: The model's precision.
    """
    if not isinstance(options, DpSgdOptions):
      raise TypeError(f'options must be DpSgdOptions. Found {options!r}.')
    super().__init__(
      model, learning_rate=learning_rate, loss=loss, precision=precision
    )
    self.options = options
    self.clipper = dp_sgd.GradientClipper(
      options.l2_norm_clip, options.noise_multiplier
    )

  @tf.function
  def train(
    self,
    initial_weights: Sequence[tf.Tensor],
    dataset: tf.data.Dataset,
    non_trainable_weights: Sequence[tf.Tensor] | None = None,
  ) -> collections.OrderedDict:
    """One round of DP-SGD from `initial_weights`.

    Args:
      initial_weights: The global model's trainable weights.
      dataset: `make_dp_sgd_dataset`'s elements.
      non_trainable_weights: As in `ClientTrainer.train`.

    Returns:
      `ClientTrainer.train`'s result; `steps` counts the steps (T),
      `loss_sum` the cases' losses, `non_finite` is 1 when the update was
      zeroed.
    """
    variables = self.model.trainable_variables
    initial_weights = self._start(initial_weights, non_trainable_weights)
    q = tf.constant(self.options.sampling_probability, tf.float32)
    zeros = [tf.zeros(v.shape, tf.float32) for v in variables]
    lot_sum = list(zeros)
    steps = tf.constant(0.0, tf.float32)
    loss_sum = tf.constant(0.0, tf.float32)
    for element in iter(dataset):
      is_case, images, regions = element[1], element[2], element[3]
      num_cases, noise_key, dropout_key = element[4], element[5], element[6]
      if is_case:
        self._set_dropout_key(dropout_key)
        with tf.GradientTape() as tape:
          probabilities = self.model(images, training=True)
          loss = self._loss_fn(regions, probabilities)
        gradients = precision_lib.scaled_gradients(
          self.optimizer, tape, loss, variables
        )
        gradients = [tf.cast(g, tf.float32) for g in gradients]
        finite = client_training.all_finite(gradients)
        gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
        clipped, _ = self.clipper.clip(gradients)
        lot_sum = [s + c for s, c in zip(lot_sum, clipped, strict=True)]
        self._dice.update_state(regions, probabilities)
        loss_sum += tf.cast(loss, tf.float32)
      else:
        expected = q * tf.cast(num_cases, tf.float32)
        noisy = self.clipper.noised_mean(lot_sum, noise_key, expected)
        noisy = [
          tf.cast(g, v.dtype) for g, v in zip(noisy, variables, strict=True)
        ]
        self.optimizer.apply_gradients(zip(noisy, variables, strict=True))
        lot_sum = list(zeros)
        steps += 1.0
    return self._result(initial_weights, steps, loss_sum)
