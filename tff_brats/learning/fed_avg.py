"""Weighted FedAvg of SegResNet from `tff.learning` parts.

`build_fed_avg_process(...)` composes, with
`tff.learning.templates.compose_learning_process`:

* distributor: `tff.learning.templates.build_broadcast_process` (the global
  `ModelWeights` to every selected client);
* client work: `tff_brats.learning.client_training.ClientTrainer` (plain
  TensorFlow, wrapped here in a `tff.tensorflow.computation`): a fresh
  client Adam every round, `client_epochs_per_round` passes over the
  client's data, update ΔW = initial − trained, weight = local steps n;
* aggregator: any `tff.aggregators.WeightedAggregationFactory`, in practice
  a privacy mechanism's `aggregation_factory()` (`tff_brats.mechanisms`:
  none, selective sharing, SVT, Gaussian): a client-side mechanism runs at
  CLIENTS on each client's own update before anything is summed;
* finalizer: `tff.learning.templates.build_apply_optimizer_finalizer` with
  the server optimiser: SGD with learning rate 1 (plain FedAvg: the new
  global model is the weighted mean of the clients' models) or Adam.

and then joins it to a dataset computation
(`tff.simulation.compose_dataset_computation_with_learning_process`), so
the returned process's `next(state, client_inputs)` takes, per client, only
a small struct `ClientInput(shard_paths, data_key)`: its TFRecord shard
paths and an int64 `[2]` key. Each client reads and crops its own data
where the computation runs; the coordinator sends paths, never voxels. The
key makes a client's crops, augmentation and dropout in one round a pure
function of the key (`client_data_key`), so runs with a seed are
reproducible and resumable, and runs without one get fresh keys from the
operating system.

Measurements of `next`, besides those of the four parts (`distributor`,
`aggregator` incl. the privacy measurements, `finalizer`):
`client_work/train`: `num_clients` and `steps` (the sum of the weights the
clients send anyway). Only with `ClientConfig.report_training_statistics`
(simulations): also `loss_sum`, `dice_intersection`/`dice_predicted`/
`dice_target` (summed TC/WT/ET voxel counts on the training crops) and
`non_finite` (clients whose update was zeroed). Those describe the clients'
raw data and are outside any privacy guarantee: by default no client sends
them, so what leaves a client is its (privatised) update and its step count.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats.data import pipeline
from tff_brats.learning import client_training
from tff_brats.learning import dp_sgd_training
from tff_brats.models import precision as precision_lib
from tff_brats.models import segresnet
from tff_brats.utils import checks

SERVER_OPTIMIZERS = ('sgd', 'adam')

# Stream ids folded into a client's data key.
_DATA_STREAM = 0
_DROPOUT_STREAM = 1

# One client's input to `next`: shard paths and its data key.
CLIENT_INPUT_TYPE = tff.StructWithPythonType(
  [
    ('shard_paths', tff.TensorType(np.str_, [None])),
    ('data_key', tff.TensorType(np.int64, [2])),
  ],
  collections.OrderedDict,
)


@dataclasses.dataclass(frozen=True)
class ClientConfig:
  """What every client does in a round.

  Attributes:
    model_config: `SegResNet.get_config()`-style keyword arguments.
    crop_size: Training crop `(d, h, w)` (multiples of 8).
    batch_size: Crops per step.
    crops_per_case: Crops taken from a case each time it is read.
    tumour_crop_probability: Probability that a crop is centred on tumour.
    client_epochs_per_round: Local passes over the client's cases.
    client_learning_rate: The client Adam's learning rate.
    loss: 'dice' or 'dice_bce'.
    precision: 'float32', 'mixed_float16' (GPUs) or 'mixed_bfloat16'.
    report_training_statistics: Every client also sends its loss, Dice
      counts on its training crops and non-finite flag (simulations only:
      they are not privatised).
    trainable_layers: None (train every weight), or the SegResNet parts
      that train (`segresnet.part_names`, e.g. ('up0', 'up1', 'up2',
      'head')): the others are frozen at the global model's values, and
      only the named parts' weights form the update that is privatised and
      averaged.
    dp_sgd: None (plain local training), or patient-level DP-SGD
      (`dp_sgd_training.DpSgdOptions`, from the `dp_sgd` mechanism): each
      round is then `local_steps` steps over Poisson lots of the client's
      cases, `crops_per_case` crops per case and step (batch_size and
      client_epochs_per_round must stay 1).
  """

  model_config: dict[str, Any]
  crop_size: tuple[int, int, int] = (64, 64, 64)
  batch_size: int = 1
  crops_per_case: int = 1
  tumour_crop_probability: float = pipeline.DEFAULT_TUMOUR_CROP_PROBABILITY
  client_epochs_per_round: int = 1
  client_learning_rate: float = 1e-3
  loss: str = 'dice_bce'
  precision: str = precision_lib.FLOAT32
  report_training_statistics: bool = False
  dp_sgd: dp_sgd_training.DpSgdOptions | None = None
  trainable_layers: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.trainable_layers is not None:
      levels = len(
        self.model_config.get('blocks_down', segresnet.DEFAULT_BLOCKS_DOWN)
      )
      object.__setattr__(
        self,
        'trainable_layers',
        segresnet.check_part_names(self.trainable_layers, levels),
      )
    if self.dp_sgd is not None:
      if not isinstance(self.dp_sgd, dp_sgd_training.DpSgdOptions):
        raise ValueError(
          f'dp_sgd must be None or DpSgdOptions. Found {self.dp_sgd!r}.'
        )
      for name in ('batch_size', 'client_epochs_per_round'):
        if getattr(self, name) != 1:
          raise ValueError(
            f'{name} must be 1 with DP-SGD (a round is local_steps steps '
            'over Poisson lots of cases; crops_per_case sets the crops of a '
            f'case). Found {getattr(self, name)!r}.'
          )
    checks.check_positive_int(
      'client_epochs_per_round', self.client_epochs_per_round
    )
    checks.check_positive_number(
      'client_learning_rate', self.client_learning_rate
    )
    client_training.make_loss(self.loss)
    precision_lib.check_precision(self.precision)
    pipeline.training_element_spec(self.crop_size, self.batch_size)
    checks.check_positive_int('crops_per_case', self.crops_per_case)
    checks.check_bool(
      'report_training_statistics', self.report_training_statistics
    )
    checks.check_probability(
      'tumour_crop_probability', self.tumour_crop_probability
    )
    multiple = 2 ** (
      len(self.model_config.get('blocks_down', (1, 2, 2, 4))) - 1
    )
    if any(size % multiple for size in self.crop_size):
      raise ValueError(
        f'crop_size must be multiples of {multiple} (SegResNet halves the '
        f'resolution {multiple.bit_length() - 1} times). '
        f'Found {tuple(self.crop_size)}.'
      )

  def build_model(self) -> segresnet.SegResNet:
    """A built SegResNet under the configured precision."""
    with precision_lib.precision_scope(self.precision):
      model = segresnet.SegResNet(**self.model_config)
      model.build((None, *self.crop_size, model.in_channels))
    if self.trainable_layers is not None:
      segresnet.freeze_all_but(model, self.trainable_layers)
    return model


def client_data_key(seed: int | None, round_num: int, client_index: int):
  """The int64 `[2]` data key of a client in a round.

  With an int `seed` a pure function of (seed, round, client index), so a
  resumed run gives every client the data it would have had; with None a
  fresh key from the operating system's entropy.
  """
  for name, value in (('round_num', round_num), ('client_index', client_index)):
    checks.check_non_negative_int(name, value)
  if seed is not None:
    checks.check_non_negative_int('seed', seed)
  if seed is None:
    words = np.frombuffer(os.urandom(16), np.int64)
  else:
    words = (
      np.random.SeedSequence([seed, round_num, client_index])
      .generate_state(2, np.uint64)
      .view(np.int64)
    )
  return np.array(words, np.int64)


def client_element_spec(config: ClientConfig) -> tuple[tf.TensorSpec, ...]:
  """The element spec of `make_client_dataset(..., config)`."""
  if config.dp_sgd is not None:
    return dp_sgd_training.element_spec(config.crop_size, config.crops_per_case)
  return (
    *pipeline.training_element_spec(config.crop_size, config.batch_size),
    tf.TensorSpec([2], tf.int64),
  )


def make_client_trainer(
  config: ClientConfig, model: tf.keras.Model
) -> client_training.ClientTrainer:
  """The client's trainer: `ClientTrainer`, or `DpSgdTrainer` with DP-SGD."""
  kwargs = dict(
    learning_rate=config.client_learning_rate,
    loss=config.loss,
    precision=config.precision,
  )
  if config.dp_sgd is not None:
    return dp_sgd_training.DpSgdTrainer(model, config.dp_sgd, **kwargs)
  return client_training.ClientTrainer(model, **kwargs)


def make_client_dataset(
  shard_paths: tf.Tensor, data_key: tf.Tensor, config: ClientConfig
) -> tf.data.Dataset:
  """A client's batches for one round: `(images, regions, dropout_key)`.

  `client_epochs_per_round` passes over the shards, each with its own
  stateless key (fresh crops and augmentation per pass); batch i carries
  the dropout key fold_in(fold_in(data_key, 1), i). With DP-SGD, the lots
  of `dp_sgd_training.make_dp_sgd_dataset` instead.
  """
  if config.dp_sgd is not None:
    return dp_sgd_training.make_dp_sgd_dataset(
      shard_paths,
      data_key,
      config.dp_sgd,
      crop_size=config.crop_size,
      crops_per_case=config.crops_per_case,
      tumour_crop_probability=config.tumour_crop_probability,
    )
  # int64 stream ids and epochs: fold_in draws its random half in the
  # dtype of `data`, so the derived keys keep 64 random bits.
  data_key = tf.convert_to_tensor(data_key, tf.int64)
  data_stream = tf.random.experimental.stateless_fold_in(
    data_key, tf.constant(_DATA_STREAM, tf.int64)
  )
  dataset = None
  for epoch in range(config.client_epochs_per_round):
    one_pass = pipeline.make_training_dataset(
      shard_paths,
      crop_size=config.crop_size,
      batch_size=config.batch_size,
      crops_per_case=config.crops_per_case,
      tumour_crop_probability=config.tumour_crop_probability,
      seed=tf.cast(
        tf.random.experimental.stateless_fold_in(
          data_stream, tf.constant(epoch, tf.int64)
        ),
        tf.int64,
      ),
    )
    dataset = one_pass if dataset is None else dataset.concatenate(one_pass)
  dropout_stream = tf.random.experimental.stateless_fold_in(
    data_key, tf.constant(_DROPOUT_STREAM, tf.int64)
  )

  def with_key(index, batch):
    images, regions = batch
    key = tf.random.experimental.stateless_fold_in(dropout_stream, index)
    return images, regions, tf.cast(key, tf.int64)

  return dataset.enumerate().map(with_key)


def build_server_optimizer(name: str, learning_rate: float):
  """`tff.learning.optimizers` SGD (no momentum) or Adam."""
  checks.check_positive_number('server_learning_rate', learning_rate)
  if name == 'sgd':
    return tff.learning.optimizers.build_sgdm(learning_rate=learning_rate)
  if name == 'adam':
    return tff.learning.optimizers.build_adam(learning_rate=learning_rate)
  raise ValueError(
    f'server_optimizer must be one of {SERVER_OPTIMIZERS}. Found {name!r}.'
  )


def build_fed_avg_process(
  config: ClientConfig,
  model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
  *,
  server_optimizer: str = 'sgd',
  server_learning_rate: float = 1.0,
) -> tff.learning.templates.LearningProcess:
  """The learning process; see the module docstring.

  Args:
    config: The clients' work.
    model_aggregator: Aggregates the clients' updates with their step
      counts as weights; default `tff.aggregators.MeanFactory()`.
    server_optimizer: 'sgd' or 'adam'.
    server_learning_rate: Its learning rate (1 for plain FedAvg with SGD).

  Returns:
    A `tff.learning.templates.LearningProcess` whose `next` takes
    `(state, client_inputs)`, one `CLIENT_INPUT_TYPE` struct per client.
    `initialize` draws random weights inside TFF; use `set_model_weights`
    to start from a model built (and seeded) by the caller.
  """
  parts = _process_parts(
    config, model_aggregator, server_optimizer, server_learning_rate
  )
  return tff.simulation.compose_dataset_computation_with_learning_process(
    parts.dataset_computation, parts.compose()
  )


def client_output_type(config: ClientConfig) -> tff.types.Type:
  """What one client hands over in `build_client_results_process`.

  `(result, train)`: its `tff.learning.templates.ClientResult` (update ΔW
  and weight n) and its `train` measurements, exactly what the client work
  of `build_fed_avg_process` produces inside TFF.
  """
  client_work = _client_computations(config)[1]
  result = client_work.next.type_signature.result
  return tff.StructWithPythonType(
    [
      ('result', result.result.member),
      ('train', result.measurements.member['train']),
    ],
    collections.OrderedDict,
  )


def build_client_results_process(
  config: ClientConfig,
  model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
  *,
  server_optimizer: str = 'sgd',
  server_learning_rate: float = 1.0,
) -> tff.learning.templates.LearningProcess:
  """`build_fed_avg_process` for clients that trained outside TFF.

  `next(state, client_outputs)` takes one `client_output_type(config)`
  value per client: the `ClientResult` and `train` measurements of a
  client that trained from `state`'s global model (e.g. on a GPU in this
  process: `tff_brats.learning.in_process`). Everything after the local
  training is the same TFF code as in `build_fed_avg_process`: the same
  distributor, the same aggregator (a privacy mechanism still runs at
  CLIENTS, on each client's own update, before anything is summed), the
  `train` measurements summed over the clients as the client work sums
  them, and the same finaliser. `initialize`, `get_model_weights`,
  `set_model_weights` and the hyper-parameter computations are those of
  the composed process, so the two processes have identical state and
  metric types and either resumes the other's checkpoints.
  """
  parts = _process_parts(
    config, model_aggregator, server_optimizer, server_learning_rate
  )
  composed = parts.compose()
  state_type = composed.initialize.type_signature.result
  outputs_type = tff.FederatedType(client_output_type(config), tff.CLIENTS)
  distributor = parts.distributor
  aggregator = parts.aggregator
  finalizer = parts.finalizer

  @tff.federated_computation(state_type, outputs_type)
  def next_fn(state, client_outputs):
    # The clients trained from state.global_model_weights outside TFF; the
    # distributor still runs for its state and measurements.
    distributor_output = distributor.next(
      state.distributor, state.global_model_weights
    )
    train = tff.federated_sum(client_outputs.train)
    aggregator_output = aggregator.next(
      state.aggregator,
      client_outputs.result.update,
      client_outputs.result.update_weight,
    )
    finalizer_output = finalizer.next(
      state.finalizer, state.global_model_weights, aggregator_output.result
    )
    new_state = tff.federated_zip(
      tff.learning.templates.LearningAlgorithmState(
        finalizer_output.result,
        distributor_output.state,
        state.client_work,
        aggregator_output.state,
        finalizer_output.state,
      )
    )
    metrics = tff.federated_zip(
      collections.OrderedDict(
        distributor=distributor_output.measurements,
        client_work=tff.federated_zip(collections.OrderedDict(train=train)),
        aggregator=aggregator_output.measurements,
        finalizer=finalizer_output.measurements,
      )
    )
    return tff.learning.templates.LearningProcessOutput(new_state, metrics)

  return tff.learning.templates.LearningProcess(
    composed.initialize,
    next_fn,
    composed.get_model_weights,
    composed.set_model_weights,
    get_hparams_fn=composed.get_hparams,
    set_hparams_fn=composed.set_hparams,
  )


@dataclasses.dataclass(frozen=True)
class _Parts:
  initial_model_weights_fn: Any
  distributor: Any
  client_work: Any
  aggregator: Any
  finalizer: Any
  dataset_computation: Any

  def compose(self) -> tff.learning.templates.LearningProcess:
    """`compose_learning_process` of the parts (clients take datasets)."""
    return tff.learning.templates.compose_learning_process(
      self.initial_model_weights_fn,
      self.distributor,
      self.client_work,
      self.aggregator,
      self.finalizer,
    )


def _process_parts(
  config, model_aggregator, server_optimizer, server_learning_rate
) -> _Parts:
  """The parts both processes are built from (arguments checked here)."""
  optimizer = build_server_optimizer(server_optimizer, server_learning_rate)
  if model_aggregator is None:
    model_aggregator = tff.aggregators.MeanFactory()
  if not isinstance(
    model_aggregator, tff.aggregators.WeightedAggregationFactory
  ):
    raise TypeError(
      'model_aggregator must be a tff.aggregators.WeightedAggregationFactory. '
      f'Found {type(model_aggregator).__name__}.'
    )
  initial_model_weights_fn, client_work, dataset_computation = (
    _client_computations(config)
  )
  weights_type = initial_model_weights_fn.type_signature.result
  return _Parts(
    initial_model_weights_fn=initial_model_weights_fn,
    distributor=tff.learning.templates.build_broadcast_process(weights_type),
    client_work=client_work,
    aggregator=model_aggregator.create(
      weights_type.trainable, tff.TensorType(np.float32)
    ),
    finalizer=tff.learning.templates.build_apply_optimizer_finalizer(
      optimizer, weights_type
    ),
    dataset_computation=dataset_computation,
  )


# The computations that depend on the clients' config alone, by config.
# Tracing them takes seconds (SegResNet built in a graph, twice), so a
# program that builds several processes for one config (a sweep over
# mechanisms or budgets, the tests) traces them once; they are immutable.
_CLIENT_COMPUTATIONS: dict[str, tuple[Any, Any, Any]] = {}
_MAX_CACHED_CONFIGS = 4


def _client_computations(config: ClientConfig):
  """(initial weights, client work, dataset computation) of `config`."""
  key = json.dumps(dataclasses.asdict(config), sort_keys=True, default=list)
  if key in _CLIENT_COMPUTATIONS:
    return _CLIENT_COMPUTATIONS[key]

  @tff.tensorflow.computation
  def initial_model_weights_fn():
    model = config.build_model()
    return tff.learning.models.ModelWeights(
      trainable=tuple(tf.identity(v) for v in model.trainable_variables),
      non_trainable=tuple(
        tf.identity(v) for v in model.non_trainable_variables
      ),
    )

  weights_type = initial_model_weights_fn.type_signature.result
  client_work = _build_client_work(config, weights_type)

  @tff.tensorflow.computation(CLIENT_INPUT_TYPE)
  def dataset_computation(client_input):
    return make_client_dataset(
      client_input['shard_paths'], client_input['data_key'], config
    )

  if len(_CLIENT_COMPUTATIONS) >= _MAX_CACHED_CONFIGS:
    _CLIENT_COMPUTATIONS.pop(next(iter(_CLIENT_COMPUTATIONS)))
  _CLIENT_COMPUTATIONS[key] = (
    initial_model_weights_fn,
    client_work,
    dataset_computation,
  )
  return _CLIENT_COMPUTATIONS[key]


def _build_client_work(config, weights_type):
  element_spec = client_element_spec(config)
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(element_spec))

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(weights, dataset):
    trainer = make_client_trainer(config, config.build_model())
    out = trainer.train(
      list(weights.trainable), dataset, list(weights.non_trainable)
    )
    result = tff.learning.templates.ClientResult(
      update=tuple(out['update']), update_weight=out['steps']
    )
    # What the server may see: the client count and the weights' sum; the
    # statistics of the client's data only in simulations.
    sent = (
      client_training.OUTPUT_KEYS
      if config.report_training_statistics
      else ('steps',)
    )
    train = collections.OrderedDict(
      num_clients=tf.constant(1, tf.int32), **{key: out[key] for key in sent}
    )
    return result, train

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(
    init_fn.type_signature.result,
    tff.FederatedType(weights_type, tff.CLIENTS),
    tff.FederatedType(data_type, tff.CLIENTS),
  )
  def next_fn(state, weights, client_data):
    results, train = tff.federated_map(client_update, (weights, client_data))
    measurements = tff.federated_zip(
      collections.OrderedDict(train=tff.federated_sum(train))
    )
    return tff.templates.MeasuredProcessOutput(state, results, measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
