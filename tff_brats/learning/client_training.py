"""One client's work in a federated round, in plain TensorFlow (no TFF).

`ClientTrainer.train(initial_weights, dataset)` is a `tf.function` that

1. loads the global model's trainable weights into the client's model,
2. restarts the client optimiser (Adam: moments and step count zeroed, so
   no state carries over between rounds, as in FedAvg with a stateless
   client optimiser),
3. trains on every batch of `dataset` (one pass; the caller repeats the
   data for several local epochs),
4. returns the model update ΔW = initial − trained (TFF's sign convention:
   the server optimiser treats the mean update as a gradient), the number
   of local steps n, and the training loss and Dice counts summed over the
   steps.

The same object runs inside TFF's client computation
(`tff_brats.learning.fed_avg`) and outside it, e.g. on a GPU in a
hospital's own process, or in `benchmarks/federated_round.py`'s plain-Keras
reference.

Batches are `(images, regions)` or `(images, regions, dropout_key)`; with a
key (int64 `[2]`) every `ChannelDropout` layer is seeded by it for that
step, so a client's dropout masks are a function of the round's data key
and reproducible; without one the layers' own keys advance as usual.

A non-finite update (e.g. after a diverging step) is replaced by zeros and
counted in `non_finite`, as TFF's own client work does; its steps still
count, so the client keeps its weight.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import tensorflow as tf

from tff_brats.models import layers
from tff_brats.models import losses
from tff_brats.models import metrics as metrics_lib
from tff_brats.models import precision as precision_lib
from tff_brats.utils import checks

LOSSES = ('dice', 'dice_bce')

# Keys of the `train` result besides `update`.
OUTPUT_KEYS = (
  'steps',
  'loss_sum',
  'dice_intersection',
  'dice_predicted',
  'dice_target',
  'non_finite',
)


def make_loss(name: str) -> tf.keras.losses.Loss:
  """'dice' (soft Dice) or 'dice_bce' (soft Dice + binary cross-entropy)."""
  if name == 'dice':
    return losses.SoftDiceLoss()
  if name == 'dice_bce':
    return losses.DiceBCELoss()
  raise ValueError(f'loss must be one of {LOSSES}. Found {name!r}.')


class ClientTrainer:
  """Trains a Keras model from given weights and returns the update."""

  def __init__(
    self,
    model: tf.keras.Model,
    *,
    learning_rate: float,
    loss: str = 'dice_bce',
    precision: str = precision_lib.FLOAT32,
  ):
    """Configures the trainer.

    Args:
      model: A built Keras model (e.g. `SegResNet`) mapping images to
        region probabilities. Its trainable variables are overwritten by
        every `train` call.
      learning_rate: The client Adam's learning rate (> 0).
      loss: One of `LOSSES`.
      precision: The precision the model was built under (`mixed_float16`
        adds dynamic loss scaling).
    """
    checks.check_positive_number('learning_rate', learning_rate)
    if not model.built or not model.trainable_variables:
      raise ValueError(
        'model must be built (called once) and have trainable variables. '
        f'Found built={model.built} with '
        f'{len(model.trainable_variables)} trainable variables.'
      )
    self.model = model
    self._loss_fn = make_loss(loss)
    self.optimizer = precision_lib.wrap_optimizer(
      tf.keras.optimizers.Adam(learning_rate), precision
    )
    self.optimizer.build(model.trainable_variables)
    self._dice = metrics_lib.PooledDice()
    self._dropouts = [
      layer
      for layer in model.submodules
      if isinstance(layer, layers.ChannelDropout)
    ]

  @tf.function
  def train(
    self,
    initial_weights: Sequence[tf.Tensor],
    dataset: tf.data.Dataset,
    non_trainable_weights: Sequence[tf.Tensor] | None = None,
  ) -> collections.OrderedDict:
    """Runs the local training; see the module docstring.

    Args:
      initial_weights: The global model's trainable weights, in the order of
        `model.trainable_variables`.
      dataset: Batches `(images, regions[, dropout_key])`.
      non_trainable_weights: The global model's non-trainable weights (e.g.
        frozen layers', `ClientConfig.trainable_layers`), in the order of
        `model.non_trainable_variables`; None keeps the model's own.

    Returns:
      An `OrderedDict` with `update` (a list like `initial_weights`),
      `steps` (float32), `loss_sum` (float32), `dice_intersection`,
      `dice_predicted`, `dice_target` (float64 `[3]`, TC/WT/ET voxel
      counts) and `non_finite` (int32, 0 or 1).
    """
    variables = self.model.trainable_variables
    initial_weights = self._start(initial_weights, non_trainable_weights)
    steps = tf.constant(0.0, tf.float32)
    loss_sum = tf.constant(0.0, tf.float32)
    # An explicit iterator: AutoGraph turns `for batch in dataset` into
    # `dataset.reduce`, which costs a fixed 1-2.5 CPU-seconds per call
    # (measured in benchmarks/federated_round.py); a loop over `iter()`
    # becomes a plain `tf.while_loop` over `get_next_as_optional`.
    for batch in iter(dataset):
      images, regions = batch[0], batch[1]
      if len(batch) > 2:
        self._set_dropout_key(batch[2])
      with tf.GradientTape() as tape:
        probabilities = self.model(images, training=True)
        loss = self._loss_fn(regions, probabilities)
      gradients = precision_lib.scaled_gradients(
        self.optimizer, tape, loss, variables
      )
      self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
      self._dice.update_state(regions, probabilities)
      steps += 1.0
      loss_sum += tf.cast(loss, tf.float32)
    return self._result(initial_weights, steps, loss_sum)

  def _start(
    self,
    initial_weights: Sequence[tf.Tensor],
    non_trainable_weights: Sequence[tf.Tensor] | None = None,
  ) -> list[tf.Tensor]:
    """Loads the global weights, zeroes the optimiser and the Dice counts."""
    initial_weights = list(initial_weights)
    pairs = [('initial_weights', initial_weights, 'trainable')]
    if non_trainable_weights is not None:
      pairs.append(
        ('non_trainable_weights', list(non_trainable_weights), 'non_trainable')
      )
    for name, values, kind in pairs:
      variables = getattr(self.model, f'{kind}_variables')
      if len(values) != len(variables):
        raise ValueError(
          f'{name} must have {len(variables)} tensors, one per {kind} '
          f'variable. Found {len(values)}.'
        )
      for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    inner = getattr(self.optimizer, 'inner_optimizer', self.optimizer)
    for variable in inner.variables:
      variable.assign(tf.zeros_like(variable))
    self._dice.reset_state()
    return initial_weights

  def _set_dropout_key(self, key: tf.Tensor) -> None:
    for layer in self._dropouts:
      layer.set_key(key)

  def _result(
    self,
    initial_weights: list[tf.Tensor],
    steps: tf.Tensor,
    loss_sum: tf.Tensor,
  ) -> collections.OrderedDict:
    """The update ΔW (zeroed if not finite) and the statistics."""
    update = [
      tf.cast(w, tf.float32) - tf.cast(v, tf.float32)
      for w, v in zip(
        initial_weights, self.model.trainable_variables, strict=True
      )
    ]
    finite = all_finite(update)
    update = [tf.where(finite, u, tf.zeros_like(u)) for u in update]
    return collections.OrderedDict(
      update=update,
      steps=steps,
      loss_sum=loss_sum,
      dice_intersection=tf.identity(self._dice.intersection),
      dice_predicted=tf.identity(self._dice.predicted),
      dice_target=tf.identity(self._dice.target),
      non_finite=1 - tf.cast(finite, tf.int32),
    )


def all_finite(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
  """A bool scalar: whether every value of every tensor is finite."""
  return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


def pooled_dice(
  intersection: Sequence[float],
  predicted: Sequence[float],
  target: Sequence[float],
) -> list[float]:
  """Per-region Dice 2I/(P+T) from summed counts (1 where P+T = 0)."""
  return [
    1.0 if p + t == 0 else 2.0 * i / (p + t)
    for i, p, t in zip(intersection, predicted, target, strict=True)
  ]
