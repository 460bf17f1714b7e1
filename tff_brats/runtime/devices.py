"""The devices local training runs on, and the choice of client runtime.

Two client runtimes train a round's clients (`tff_brats.training.federated`):

* 'worker': inside TFF's C++ worker (`tff_brats.runtime.local`). Its pip
  build has no CUDA, so it trains on the CPU only.
* 'in_process': in the coordinator's own process, with plain TensorFlow,
  one client per device at a time over the visible GPUs (or the CPU when
  there is none), then the same TFF aggregation
  (`tff_brats.learning.in_process`).

'auto' (the default) is 'in_process' when TensorFlow sees a GPU and
'worker' otherwise.

Set-up that must happen before TensorFlow initialises its devices
(`configure_gpus`): memory growth on every GPU, so that several clients'
models and TFF's own sessions share a card instead of the first one
reserving all of its memory.
"""

from __future__ import annotations

from absl import logging
import tensorflow as tf

RUNTIMES = ('auto', 'worker', 'in_process')


def resolve_runtime(name: str) -> str:
  """'worker' or 'in_process' for `name` in `RUNTIMES`.

  Raises:
    ValueError: `name` is not one of `RUNTIMES`.
  """
  if name not in RUNTIMES:
    raise ValueError(f'runtime must be one of {RUNTIMES}. Found {name!r}.')
  if name != 'auto':
    return name
  return 'in_process' if tf.config.list_physical_devices('GPU') else 'worker'


def configure_gpus(memory_growth: bool = True) -> list[str]:
  """Turns on memory growth on every visible GPU; returns their names.

  Call before anything runs on a GPU. If TensorFlow has already
  initialised its devices the setting cannot change any more: that is
  logged as a warning, not raised, since training still works (with the
  first process holding most of the card's memory).
  """
  gpus = tf.config.list_physical_devices('GPU')
  for gpu in gpus:
    try:
      tf.config.experimental.set_memory_growth(gpu, memory_growth)
    except RuntimeError as e:  # devices already initialised
      logging.warning('Cannot set memory growth on %s: %s', gpu.name, e)
  return [gpu.name for gpu in gpus]


def training_devices() -> list[str]:
  """The logical devices clients train on: every GPU, else the CPUs.

  Names like '/device:GPU:0', in TensorFlow's order. Without a GPU, every
  logical CPU device (one unless the process split its CPU into several
  with `tf.config.set_logical_device_configuration`, as the tests do).
  """
  gpus = tf.config.list_logical_devices('GPU')
  if gpus:
    return [device.name for device in gpus]
  return [device.name for device in tf.config.list_logical_devices('CPU')]
