"""Mixed-precision set-up: Keras policies, loss scaling, scaled gradients.

Three precisions (Micikevicius et al. 2018, "Mixed precision training"):

* 'float32': everything in float32 (the default).
* 'mixed_float16': for GPUs. Layers compute in float16 and keep float32
  variables; the loss is scaled so small float16 gradients do not flush to
  zero, which `tf.keras.mixed_precision.LossScaleOptimizer` does (dynamic
  scale) - `wrap_optimizer` adds it and `scaled_gradients` uses it.
* 'mixed_bfloat16': for CPUs with bfloat16 arithmetic (AVX512_BF16 / AMX)
  and TPUs. bfloat16 has float32's exponent range, so no loss scaling.

A Keras layer takes the global policy when it is constructed, so build the
model inside `precision_scope` (or after `set_precision`). `SegResNet`
then computes in the low-precision type, keeps float32 variables, computes
group-norm statistics in float32 and returns float32 probabilities; the
losses compute in float32.

Example:

  with precision.precision_scope('mixed_bfloat16'):
    model = segresnet.SegResNet()
  optimizer = precision.wrap_optimizer(tf.keras.optimizers.Adam(1e-4),
                                       'mixed_bfloat16')
  with tf.GradientTape() as tape:
    loss = loss_fn(labels, model(images, training=True))
  grads = precision.scaled_gradients(
      optimizer, tape, loss, model.trainable_variables)
  optimizer.apply_gradients(zip(grads, model.trainable_variables))
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Sequence
import contextlib

import tensorflow as tf

from tff_brats.utils import checks

FLOAT32 = 'float32'
MIXED_FLOAT16 = 'mixed_float16'
MIXED_BFLOAT16 = 'mixed_bfloat16'
PRECISIONS = (FLOAT32, MIXED_FLOAT16, MIXED_BFLOAT16)


def check_precision(precision: str) -> None:
  """Raises ValueError unless `precision` is one of `PRECISIONS`."""
  checks.check_one_of('precision', precision, PRECISIONS)


def set_precision(precision: str) -> None:
  """Sets the global Keras policy (affects layers constructed afterwards)."""
  check_precision(precision)
  tf.keras.mixed_precision.set_global_policy(precision)


def current_precision() -> str:
  """The name of the global Keras policy."""
  return tf.keras.mixed_precision.global_policy().name


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
  """Sets the global policy inside the block and restores the old one."""
  check_precision(precision)
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy(precision)
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)


def recommended_precision(
  device_type: str | None = None, *, cpu_flags: Collection[str] | None = None
) -> str:
  """The fastest precision for training on this kind of device.

  * GPU: 'mixed_float16'.
  * CPU with bfloat16 arithmetic (`avx512_bf16` or `amx_bf16` in the CPU
    flags): 'mixed_bfloat16'. On a 2-core AVX512_BF16 machine (AMD EPYC)
    a SegResNet training step took 0.39 s instead of 0.59 s at 64³ and
    1.35 s instead of 1.97 s at 96³ (`benchmarks/train_step.py`); without
    such instructions bfloat16 is emulated and slower.
  * Other CPUs: 'float32'.

  Args:
    device_type: 'GPU' or 'CPU'; by default 'GPU' when TensorFlow sees one.
    cpu_flags: The CPU's feature flags; by default read from /proc/cpuinfo
      (none elsewhere).

  Raises:
    ValueError: `device_type` is neither 'GPU' nor 'CPU'.
  """
  if device_type is None:
    device_type = 'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'
  checks.check_one_of('device_type', device_type, ('GPU', 'CPU'))
  if device_type == 'GPU':
    return MIXED_FLOAT16
  flags = _cpu_flags() if cpu_flags is None else set(cpu_flags)
  if flags & {'avx512_bf16', 'amx_bf16'}:
    return MIXED_BFLOAT16
  return FLOAT32


def wrap_optimizer(
  optimizer: tf.keras.optimizers.Optimizer, precision: str
) -> tf.keras.optimizers.Optimizer:
  """Adds dynamic loss scaling for 'mixed_float16'; else returns `optimizer`."""
  check_precision(precision)
  if precision != MIXED_FLOAT16 or isinstance(
    optimizer, tf.keras.mixed_precision.LossScaleOptimizer
  ):
    return optimizer
  return tf.keras.mixed_precision.LossScaleOptimizer(optimizer)


def scaled_gradients(
  optimizer: tf.keras.optimizers.Optimizer,
  tape: tf.GradientTape,
  loss: tf.Tensor,
  variables: Sequence[tf.Variable],
) -> list[tf.Tensor | None]:
  """Gradients of `loss`, through the loss scale when `optimizer` has one.

  With a `LossScaleOptimizer`, differentiates `loss · scale` (the scale
  enters as the output gradient, so `loss` may have been computed inside the
  tape and this called outside it) and divides the gradients by the scale;
  non-finite gradients then make `apply_gradients` skip the step and lower
  the scale. Otherwise plain `tape.gradient`.
  """
  if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
    scale = tf.cast(optimizer.loss_scale, loss.dtype)
    scaled = tape.gradient(loss, variables, output_gradients=scale)
    return optimizer.get_unscaled_gradients(scaled)
  return tape.gradient(loss, variables)


def _cpu_flags() -> set[str]:
  """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'flags':
          return set(value.split())
  except OSError:
    pass
  return set()
