"""The in-process client runtime: local training on this process's devices.

TFF's C++ worker is CPU-only (its pip build has no CUDA), so a round whose
clients train inside it cannot use a GPU. `InProcessLearningProcess` runs
the same round with the clients' local training moved into this process:

1. every selected client trains with the plain-TF `ClientTrainer` on its
   own data (`fed_avg.make_client_dataset`, from its shard paths and data
   key, as inside TFF), starting from the state's global model;
2. clients are spread over the training devices (`devices.training_devices`:
   every GPU, else the CPU) round-robin in the order they are given, client
   k on device k mod D, one client per device at a time, the devices in
   parallel (one thread each);
3. their results (update ΔW, step count n, and the `train` measurements)
   go to `fed_avg.build_client_results_process`, the same TFF distributor,
   privacy aggregator and finaliser as the worker runtime's process, on the
   project's TFF runtime. The mechanism still runs at CLIENTS on each
   client's own update before anything is summed.

The process has the interface of a `tff.learning` `LearningProcess`
(`initialize`, `next(state, client_inputs)`, `get_model_weights`,
`set_model_weights`) and identical state and metric types, so a run can
switch runtimes on resume (`tff_brats.training.federated`).

A client's result depends only on the global model and its inputs (its
data key fixes its crops, augmentation and dropout), not on the device it
ran on: the same kernels run on every CPU device, and on GPUs up to their
floating-point differences (TF32 off for comparisons).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
import threading
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats.learning import client_training
from tff_brats.learning import fed_avg
from tff_brats.runtime import devices as devices_lib


def dataset_function(config: fed_avg.ClientConfig):
  """`fed_avg.make_client_dataset` as a `tf.function` traced once.

  Called as `fn(shard_paths, data_key)` (a string vector and an int64
  `[2]`); tracing once, as TFF traces its dataset computation once, saves
  about 0.2 s of Python per client and call of the eager pipeline.
  """

  @tf.function(
    input_signature=[
      tf.TensorSpec([None], tf.string),
      tf.TensorSpec([2], tf.int64),
    ]
  )
  def make_dataset(shard_paths, data_key):
    return fed_avg.make_client_dataset(shard_paths, data_key, config)

  return make_dataset


class ClientPool:
  """One `ClientTrainer` per device; trains a round's clients over them."""

  def __init__(
    self, config: fed_avg.ClientConfig, devices: Sequence[str] | None = None
  ):
    """Configures the pool (models are built on the first `train`).

    Args:
      config: The clients' work.
      devices: Device names (e.g. '/device:GPU:0'); default
        `devices.training_devices()`.

    Raises:
      ValueError: An empty device list.
    """
    self.config = config
    self.devices = list(
      devices_lib.training_devices() if devices is None else devices
    )
    if not self.devices:
      raise ValueError('devices must name at least one device. Found none.')
    self.last_placement: list[str] = []
    self._trainers: list[client_training.ClientTrainer] | None = None
    self._make_dataset = dataset_function(config)

  @property
  def trainers(self) -> list[client_training.ClientTrainer]:
    """The trainers, one per device (built on first use).

    Built lazily: Keras models built before TFF traces a computation (in a
    graph) are invalidated, and the learning process traces when it is
    built.
    """
    if self._trainers is None:
      trainers = []
      for device in self.devices:
        with tf.device(device):
          trainers.append(
            fed_avg.make_client_trainer(self.config, self.config.build_model())
          )
      self._trainers = trainers
    return self._trainers

  def train(
    self,
    initial_weights: Sequence[Any],
    client_inputs: Sequence[collections.abc.Mapping],
    non_trainable_weights: Sequence[Any] | None = None,
  ) -> list[collections.OrderedDict]:
    """Trains every client from `initial_weights`; returns their outputs.

    Args:
      initial_weights: The global model's trainable weights.
      non_trainable_weights: Its non-trainable weights (frozen layers'),
        loaded into every client's model; None keeps the models' own.
      client_inputs: Per client, `shard_paths` and `data_key` (as
        `fed_avg.CLIENT_INPUT_TYPE`).

    Returns:
      Per client, in order, an `OrderedDict(result=ClientResult(update,
      update_weight), train=OrderedDict(...))` of
      `fed_avg.client_output_type(config)`.
    """
    trainers = self.trainers
    num_devices = len(self.devices)
    placement = [
      self.devices[k % num_devices] for k in range(len(client_inputs))
    ]
    weights = [tf.convert_to_tensor(w, tf.float32) for w in initial_weights]
    frozen = (
      None
      if non_trainable_weights is None
      else [tf.convert_to_tensor(w) for w in non_trainable_weights]
    )
    outputs: list[collections.OrderedDict | None] = [None] * len(client_inputs)

    def run_device(d):
      for k in range(d, len(client_inputs), num_devices):
        outputs[k] = self._train_one(
          trainers[d], self.devices[d], weights, frozen, client_inputs[k]
        )

    used = min(num_devices, len(client_inputs))
    if used <= 1:
      for d in range(used):
        run_device(d)
    else:
      _run_in_threads(run_device, used)
    self.last_placement = placement
    return outputs

  def _train_one(self, trainer, device, weights, frozen, client_input):
    with tf.device('/device:CPU:0'):
      dataset = self._make_dataset(
        tf.constant(
          [_as_str(p) for p in np.asarray(client_input['shard_paths'])],
          tf.string,
        ),
        tf.constant(np.asarray(client_input['data_key']), tf.int64),
      )
    with tf.device(device):
      out = trainer.train(weights, dataset, frozen)
    sent = (
      client_training.OUTPUT_KEYS
      if self.config.report_training_statistics
      else ('steps',)
    )
    train = collections.OrderedDict(num_clients=np.int32(1))
    for key in sent:
      train[key] = out[key].numpy()
    return collections.OrderedDict(
      result=tff.learning.templates.ClientResult(
        update=tuple(u.numpy() for u in out['update']),
        update_weight=out['steps'].numpy(),
      ),
      train=train,
    )


class InProcessLearningProcess:
  """A learning process whose clients train in this process; see the module.

  Example:

    process = InProcessLearningProcess(config, aggregator)
    with local.LocalRuntime() as runtime:   # for the TFF aggregation
      state = process.initialize()
      output = process.next(state, client_inputs)
  """

  def __init__(
    self,
    config: fed_avg.ClientConfig,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    *,
    server_optimizer: str = 'sgd',
    server_learning_rate: float = 1.0,
    devices: Sequence[str] | None = None,
  ):
    """Builds the TFF part (tens of seconds of tracing) and the pool.

    Args:
      config: The clients' work.
      model_aggregator: As in `fed_avg.build_fed_avg_process`.
      server_optimizer: As in `fed_avg.build_fed_avg_process`.
      server_learning_rate: As in `fed_avg.build_fed_avg_process`.
      devices: The training devices; default `devices.training_devices()`.
    """
    self.results_process = fed_avg.build_client_results_process(
      config,
      model_aggregator,
      server_optimizer=server_optimizer,
      server_learning_rate=server_learning_rate,
    )
    self.pool = ClientPool(config, devices)
    self.initialize = self.results_process.initialize
    self.get_model_weights = self.results_process.get_model_weights
    self.set_model_weights = self.results_process.set_model_weights
    self.get_hparams = self.results_process.get_hparams
    self.set_hparams = self.results_process.set_hparams

  @property
  def state_type(self) -> tff.types.Type:
    return self.initialize.type_signature.result

  def next(self, state, client_inputs):
    """One round: local training here, then TFF's aggregation and step.

    Args:
      state: The learning state (as returned by `initialize` or `next`).
      client_inputs: Per client, `shard_paths` and `data_key`.

    Returns:
      A `tff.learning.templates.LearningProcessOutput`.
    """
    # The state returned by TFF holds the weights as numpy arrays: reading
    # them here saves shipping the whole state to the worker and back.
    weights = state.global_model_weights
    outputs = self.pool.train(
      weights.trainable, client_inputs, weights.non_trainable
    )
    return self.results_process.next(state, outputs)


def _run_in_threads(fn, count: int) -> None:
  """fn(0), …, fn(count - 1) in daemon threads; re-raises the first error.

  Daemon threads, joined in short waits: Ctrl-C reaches the caller at once
  (a client's TensorFlow call cannot be interrupted, and a pool's
  non-daemon threads would hold the exit until it returns).
  """
  errors: list[BaseException] = []

  def run(index):
    try:
      fn(index)
    except BaseException as e:
      errors.append(e)

  threads = [
    threading.Thread(
      target=run, args=(index,), name=f'client-trainer-{index}', daemon=True
    )
    for index in range(count)
  ]
  for thread in threads:
    thread.start()
  for thread in threads:
    while thread.is_alive():
      thread.join(0.2)
  if errors:
    raise errors[0]


def _as_str(path) -> str:
  return path.decode() if isinstance(path, bytes) else str(path)
