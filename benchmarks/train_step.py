"""Benchmarks SegResNet training steps on CPU: seconds per step.

One step is what a client does per batch: forward pass, soft Dice loss,
`tape.gradient` over `model.trainable_variables`, Adam update, all in one
`tf.function` (graph mode, no XLA: XLA's CPU code was about 12 times slower
here, constant-folding the group norms). Batch 1, Adam lr 1e-4, random
volumes and masks (the step's cost does not depend on the values).

Reference on this machine kind (DESIGN.md): PyTorch + MONAI SegResNet
(4,702,227 parameters), 2 threads, batch 1, Adam + Dice: 1.19 s per step
at 64³ and 3.8 s at 96³.

Example (threads are set before TensorFlow starts):

  TF_CPP_MIN_LOG_LEVEL=2 python -m benchmarks.train_step \
    --sizes=64,96 --precisions=float32,mixed_bfloat16 --steps=6

Prints one JSON object to stdout (progress goes to stderr). Every result
also reports `background_cpu_fraction`, the share of the machine's CPU time
used by other processes while it was measured: the machine is shared, and
a busy neighbour doubles a step's time.
"""

from __future__ import annotations

from collections.abc import Sequence
import gc
import json
import os
import sys
from typing import Any

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import machine
from experiments import flag_types
from tff_brats.models import losses
from tff_brats.models import precision as precision_lib
from tff_brats.models import segresnet

REFERENCE_SECONDS = {
  'pytorch_monai_64': 1.19,
  'pytorch_monai_96': 3.8,
  'target_64_float32': 0.72,
}

_SIZES = flag_types.DEFINE_int_list(
  'sizes', [64, 96], 'Cube crop edge lengths.'
)
_PRECISIONS = flags.DEFINE_list(
  'precisions',
  ['float32', 'mixed_bfloat16'],
  f'Precisions to measure, of {", ".join(precision_lib.PRECISIONS)}.',
)
_INIT_FILTERS = flags.DEFINE_integer('init_filters', 16, 'SegResNet width.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Crops per step.')
_WARMUP = flags.DEFINE_integer(
  'warmup', 2, 'Untimed steps per configuration (tracing, allocations).'
)
_STEPS = flags.DEFINE_integer('steps', 6, 'Timed steps per configuration.')
_INTRA_OP_THREADS = flags.DEFINE_integer(
  'intra_op_threads', 2, 'TensorFlow intra-op threads (0: TF default).'
)
_INTER_OP_THREADS = flags.DEFINE_integer(
  'inter_op_threads', 1, 'TensorFlow inter-op threads (0: TF default).'
)
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-4, 'Adam rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the weights and the data.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _SIZES.value or any(v < 8 or v % 8 for v in _SIZES.value):
    raise app.UsageError(
      f'--sizes must be positive multiples of 8. Found {_SIZES.value}.'
    )
  for name in _PRECISIONS.value:
    if name not in precision_lib.PRECISIONS:
      raise app.UsageError(
        f'--precisions must be of {", ".join(precision_lib.PRECISIONS)}. '
        f'Found {name!r}.'
      )
  result = run_benchmark(
    sizes=_SIZES.value,
    precisions=_PRECISIONS.value,
    init_filters=_INIT_FILTERS.value,
    batch_size=_BATCH_SIZE.value,
    warmup=_WARMUP.value,
    steps=_STEPS.value,
    intra_op_threads=_INTRA_OP_THREADS.value,
    inter_op_threads=_INTER_OP_THREADS.value,
    learning_rate=_LEARNING_RATE.value,
    seed=_SEED.value,
  )
  json.dump(result, sys.stdout, indent=1)
  sys.stdout.write('\n')


def run_benchmark(
  *,
  sizes: Sequence[int] = (64, 96),
  precisions: Sequence[str] = ('float32', 'mixed_bfloat16'),
  init_filters: int = 16,
  batch_size: int = 1,
  warmup: int = 2,
  steps: int = 6,
  intra_op_threads: int = 2,
  inter_op_threads: int = 1,
  learning_rate: float = 1e-4,
  seed: int = 0,
) -> dict[str, Any]:
  """Times training steps for every precision and size.

  Threads can only be set before TensorFlow runs its first op; if it
  already has, the current setting must equal the requested one.

  Returns:
    A JSON-serialisable dict: `config` (TensorFlow, oneDNN, threads, CPU,
    model), `parameters`, `reference_seconds` and `results`, one entry per
    (precision, size) with the per-step wall times, their median and
    minimum, the process CPU seconds per step, the convolution GFLOP per
    step and the rate they ran at, and the background CPU share.
  """
  for name, value in (
    ('batch_size', batch_size),
    ('steps', steps),
    ('init_filters', init_filters),
  ):
    if value < 1:
      raise ValueError(f'{name} must be a positive integer. Found {value}.')
  if warmup < 0:
    raise ValueError(f'warmup must be non-negative. Found {warmup}.')
  machine.set_threads(intra_op_threads, inter_op_threads)
  results = []
  parameters = None
  for precision in precisions:
    for size in sizes:
      machine.progress(f'{precision} {size}³: building')
      measured = _measure(
        precision=precision,
        size=size,
        init_filters=init_filters,
        batch_size=batch_size,
        warmup=warmup,
        steps=steps,
        learning_rate=learning_rate,
        seed=seed,
      )
      parameters = measured.pop('parameters')
      results.append(measured)
      machine.progress(
        f'{precision} {size}³: median {measured["median_seconds"]:.3f} s, '
        f'min {measured["min_seconds"]:.3f} s per step (background CPU '
        f'{measured["background_cpu_fraction"]:.0%})'
      )
      gc.collect()
  threading = tf.config.threading
  return {
    'benchmark': 'train_step',
    'config': {
      'tensorflow': tf.__version__,
      'onednn': machine.onednn_enabled(),
      'TF_ENABLE_ONEDNN_OPTS': os.environ.get('TF_ENABLE_ONEDNN_OPTS'),
      'xla_jit_compile': False,
      'intra_op_threads': threading.get_intra_op_parallelism_threads(),
      'inter_op_threads': threading.get_inter_op_parallelism_threads(),
      'cpu_count': os.cpu_count(),
      'cpu': machine.cpu_model(),
      'avx512_bf16': 'avx512_bf16' in machine.cpu_flags(),
      'model': 'SegResNet',
      'init_filters': init_filters,
      'blocks_down': [1, 2, 2, 4],
      'blocks_up': [1, 1, 1],
      'batch_size': batch_size,
      'optimizer': f'Adam(learning_rate={learning_rate})',
      'loss': 'SoftDiceLoss',
      'warmup_steps': warmup,
      'timed_steps': steps,
      'seed': seed,
    },
    'parameters': parameters,
    'reference_seconds': REFERENCE_SECONDS,
    'results': results,
  }


def _measure(
  *,
  precision: str,
  size: int,
  init_filters: int,
  batch_size: int,
  warmup: int,
  steps: int,
  learning_rate: float,
  seed: int,
) -> dict[str, Any]:
  """Builds a model and an optimizer, then times `steps` training steps."""
  tf.keras.utils.set_random_seed(seed)
  with precision_lib.precision_scope(precision):
    model = segresnet.SegResNet(init_filters=init_filters)
  optimizer = precision_lib.wrap_optimizer(
    tf.keras.optimizers.Adam(learning_rate), precision
  )
  loss_fn = losses.SoftDiceLoss()
  rng = np.random.default_rng(seed)
  shape = (batch_size, size, size, size)
  images = tf.constant(rng.normal(size=(*shape, 4)), tf.float32)
  labels = tf.constant(rng.uniform(size=(*shape, 3)) < 0.1, tf.float32)
  model(images[:1])

  @tf.function(jit_compile=False)
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
    grads = precision_lib.scaled_gradients(
      optimizer, tape, loss, model.trainable_variables
    )
    optimizer.apply_gradients(
      zip(grads, model.trainable_variables, strict=True)
    )
    return loss

  timing = machine.time_calls(
    lambda: float(train_step(images, labels)), warmup, steps
  )
  loss = timing.last_result
  if not np.isfinite(loss):
    raise FloatingPointError(f'The loss is not finite. Found {loss}.')
  gflop = _conv_gflop_per_step(model, size, batch_size)
  median = float(np.median(timing.wall))
  summary = timing.summary('step')
  background = summary.pop('background_cpu_fraction')
  return {
    'precision': precision,
    'size': size,
    **summary,
    'conv_gflop_per_step': round(gflop, 1),
    'conv_gflop_per_second_at_median': round(gflop / median, 1),
    'background_cpu_fraction': background,
    'parameters': model.num_parameters,
  }


def _conv_gflop_per_step(
  model: segresnet.SegResNet, size: int, batch_size: int
) -> float:
  """Convolution GFLOP of one training step (2 FLOP per multiply-add).

  Forward MACs per layer are output voxels × kernel volume × input channels
  × output channels; the backward pass needs the same again for the
  weight gradients and for the input gradients (except the first layer's).
  """
  f = model.init_filters
  levels = len(model.blocks_down)
  voxels = [batch_size * (size // 2**i) ** 3 for i in range(levels)]
  width = [f * 2**i for i in range(levels)]
  first = voxels[0] * 27 * model.in_channels * f
  macs = first
  for i in range(levels):
    if i:
      macs += voxels[i] * 27 * width[i - 1] * width[i]
    macs += model.blocks_down[i] * 2 * voxels[i] * 27 * width[i] ** 2
  for j, blocks in enumerate(model.blocks_up):
    level = levels - 2 - j
    macs += voxels[level + 1] * width[level + 1] * width[level]
    macs += blocks * 2 * voxels[level] * 27 * width[level] ** 2
  macs += voxels[0] * f * model.out_channels
  return 2 * (3 * macs - first) / 1e9


if __name__ == '__main__':
  app.run(main)
