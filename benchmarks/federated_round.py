"""Benchmarks one federated round in TFF against the same work in plain TF.

TFF side: `process.next(state, client_inputs)` of the project's learning
process (`tff_brats.learning.fed_avg.build_fed_avg_process`) on the
project's local C++ worker (`tff_brats.runtime.local.LocalRuntime`): the
state goes to the worker, every client builds its data set from its shard
paths and data key, trains (`ClientTrainer`), privatises its update
(`--privacy_mechanism`), the server takes the step-weighted mean and
applies it (SGD, learning rate 1), and the new state comes back.

Plain side (the reference), in this process, no TFF: for each client in
turn `ClientTrainer.train` on `make_client_dataset(paths, key, config)`
(built by a `tf.function` traced once, as TFF traces its dataset
computation once) with the same keys, the same mechanism
(the mechanism's `privatize`, fresh noise), then the same weighted mean and
server step. Both sides start from
the same initial weights and see the same data keys in round r, so they do
the same local steps on the same crops (the per-round loss sums in the
output show it; with the SVT the noise differs).

Rounds alternate (TFF round r, then plain round r), so a change in the
load of the shared machine hits both sides alike; `--warmup` pairs run
first untimed (tracing, graph import and session creation in the worker).

Fairness. The driver's TensorFlow pools are set by `--intra_op_threads` and
`--inter_op_threads` before TensorFlow runs anything. The worker is a
separate C++ process without thread flags; its TensorFlow reads
`TF_NUM_INTRAOP_THREADS`/`TF_NUM_INTEROP_THREADS`, which this benchmark
sets for it (`--worker_*_threads`, default: the driver's numbers; 0 leaves
TF's default of one thread per core). Differences that remain and are
reported in `config`: the worker runs the clients of a `federated_map`
concurrently (up to `--worker_max_concurrent_calls` sessions per
computation; -1, the project's default, means all clients at once) where
the reference runs them one after another, and it runs graphs with
Grappler's meta-optimiser off (TFF's session options; with
`--noplain_meta_optimizer` the reference does too), so with clients in
parallel the worker can keep more cores busy than the reference
(`cores_used`). The worker's CPU time shows up in
`background_cpu_fraction`; `worker_cpu_seconds_per_round` measures it
directly (/proc). `--worker_max_concurrent_calls=1
--noplain_meta_optimizer` is the like-for-like comparison.

`breakdown` times what a round ships without training:
`process.get_model_weights(state)` sends the whole learning state to the
worker and returns the model weights (4.7M float32 values each way for
SegResNet-16).

Target (the issue): `ratio` = median TFF round / median plain round <= 1.10.

Example (threads are set before TensorFlow starts):

  TF_CPP_MIN_LOG_LEVEL=2 python -m benchmarks.federated_round \
    --clients=4 --crop_size=32 --rounds=3 --warmup=1

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
import tensorflow as tf
import tensorflow_federated as tff

from benchmarks import federated_setup
from benchmarks import machine
from tff_brats import mechanisms
from tff_brats.learning import client_training
from tff_brats.learning import fed_avg
from tff_brats.learning import in_process

TARGET_RATIO = 1.10

_COMMON = federated_setup.define_flags(
  clients=4,
  volume_size=64,
  crop_size=64,
  init_filters=16,
  privacy_mechanism='none',
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Crops per step.')
_CLIENT_EPOCHS_PER_ROUND = flags.DEFINE_integer(
  'client_epochs_per_round', 1, 'Local passes over a client’s cases.'
)
_CLIENT_LEARNING_RATE = flags.DEFINE_float(
  'client_learning_rate', 1e-3, 'The client Adam’s learning rate.'
)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds per side.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed rounds per side first.')
_BREAKDOWN_CALLS = flags.DEFINE_integer(
  'breakdown_calls', 3, 'Timed state round trips (0: skip the breakdown).'
)
_PLAIN_META_OPTIMIZER = flags.DEFINE_bool(
  'plain_meta_optimizer',
  True,
  "Grappler's meta-optimiser on the plain side (TF's default; the worker "
  'runs without it).',
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = run_benchmark(
      **federated_setup.flag_arguments(_COMMON),
      batch_size=_BATCH_SIZE.value,
      client_epochs_per_round=_CLIENT_EPOCHS_PER_ROUND.value,
      client_learning_rate=_CLIENT_LEARNING_RATE.value,
      rounds=_ROUNDS.value,
      warmup=_WARMUP.value,
      breakdown_calls=_BREAKDOWN_CALLS.value,
      plain_meta_optimizer=_PLAIN_META_OPTIMIZER.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  json.dump(result, sys.stdout, indent=1)
  sys.stdout.write('\n')


def run_benchmark(
  *,
  data_dir: str | None = None,
  clients: int = 4,
  cases_per_client: int = 2,
  volume_size: int = 64,
  crop_size: int = 64,
  init_filters: int = 16,
  batch_size: int = 1,
  crops_per_case: int = 1,
  client_epochs_per_round: int = 1,
  client_learning_rate: float = 1e-3,
  privacy_mechanism: str = 'none',
  svt: dict[str, float] | None = None,
  rounds: int = 3,
  warmup: int = 1,
  breakdown_calls: int = 3,
  intra_op_threads: int = 2,
  inter_op_threads: int = 1,
  worker_intra_op_threads: int = -1,
  worker_inter_op_threads: int = -1,
  worker_max_concurrent_calls: int = -1,
  plain_meta_optimizer: bool = True,
  seed: int = 0,
) -> dict[str, Any]:
  """Times `rounds` TFF rounds and as many plain rounds, alternating.

  Threads can only be set before TensorFlow runs its first op; if it
  already has, the current setting must equal the requested one.

  Returns:
    A JSON-serialisable dict: `config`, `parameters`, `steps_per_round`,
    `tff` and `plain` (per-round wall seconds, median/min/max, CPU seconds
    per round of this process and of the worker, CPU shares of the
    worker and of other processes), `ratio` (median TFF / median plain),
    `target_ratio`, `losses` (per round and side), `breakdown` (state
    round trip) and `worker` (pid facts).

  Raises:
    ValueError: An argument is invalid.
  """
  for name, value in (
    ('clients', clients),
    ('rounds', rounds),
    ('cases_per_client', cases_per_client),
  ):
    if value < 1:
      raise ValueError(f'{name} must be a positive integer. Found {value}.')
  for name, value in (('warmup', warmup), ('breakdown_calls', breakdown_calls)):
    if value < 0:
      raise ValueError(f'{name} must be non-negative. Found {value}.')
  svt = dict(federated_setup.SVT_DEFAULTS if svt is None else svt)
  config = fed_avg.ClientConfig(
    model_config={'init_filters': init_filters},
    crop_size=(crop_size,) * 3,
    batch_size=batch_size,
    crops_per_case=crops_per_case,
    client_epochs_per_round=client_epochs_per_round,
    client_learning_rate=client_learning_rate,
    # The benchmark checks both paths train alike by their losses.
    report_training_statistics=True,
  )
  aggregator = federated_setup.model_aggregator(privacy_mechanism, svt)
  threads = dict(
    intra_op_threads=intra_op_threads,
    inter_op_threads=inter_op_threads,
    worker_intra_op_threads=worker_intra_op_threads,
    worker_inter_op_threads=worker_inter_op_threads,
    worker_max_concurrent_calls=worker_max_concurrent_calls,
  )
  if not plain_meta_optimizer:
    # This process only: the worker's graphs never see this setting.
    tf.config.optimizer.set_experimental_options(
      {'disable_meta_optimizer': True}
    )
  with federated_setup.run_on_worker(
    data_dir=data_dir,
    clients=clients,
    cases_per_client=cases_per_client,
    volume_size=volume_size,
    seed=seed,
    **threads,
  ) as (client_data, worker_pid):
    measured = _measure(
      worker_pid,
      config,
      aggregator,
      client_data,
      rounds=rounds,
      warmup=warmup,
      breakdown_calls=breakdown_calls,
      seed=seed,
    )

  tff_median = measured['tff']['median_seconds']
  plain_median = measured['plain']['median_seconds']
  return {
    'benchmark': 'federated_round',
    'config': {
      'tensorflow': tf.__version__,
      'tensorflow_federated': tff.__version__,
      'onednn': machine.onednn_enabled(),
      'cpu_count': os.cpu_count(),
      'cpu': machine.cpu_model(),
      **federated_setup.thread_config(**threads),
      'worker_runs_clients': (
        'concurrently'
        if worker_max_concurrent_calls < 0
        or worker_max_concurrent_calls >= clients
        else f'at most {worker_max_concurrent_calls} at once'
      ),
      'plain_runs_clients': 'one after another',
      'client_loop': 'for batch in iter(dataset) (a tf.while_loop)',
      'worker_grappler_meta_optimizer': False,
      'plain_grappler_meta_optimizer': plain_meta_optimizer,
      'data_dir': data_dir or 'synthetic (temporary)',
      'clients': clients,
      'cases_per_client': None if data_dir else cases_per_client,
      'volume_size': None if data_dir else volume_size,
      'crop_size': crop_size,
      'init_filters': init_filters,
      'batch_size': batch_size,
      'crops_per_case': crops_per_case,
      'client_epochs_per_round': client_epochs_per_round,
      'client_optimizer': f'Adam(learning_rate={client_learning_rate})',
      'server_optimizer': 'SGD(learning_rate=1.0)',
      'loss': config.loss,
      'privacy_mechanism': privacy_mechanism,
      'mechanism': federated_setup.privacy_mechanism(
        privacy_mechanism, svt
      ).to_dict(),
      'noise_seed': 'fresh per client and round (None)',
      'warmup_rounds': warmup,
      'timed_rounds': rounds,
      'seed': seed,
    },
    **measured,
    'ratio': round(tff_median / plain_median, 3),
    'target_ratio': TARGET_RATIO,
  }


def _measure(
  worker_pid,
  config,
  aggregator,
  client_data,
  *,
  rounds,
  warmup,
  breakdown_calls,
  seed,
):
  """Builds both sides, then runs and times their rounds alternately."""
  machine.progress('building the learning process')
  started = time.perf_counter()
  process = fed_avg.build_fed_avg_process(config, aggregator)
  build_seconds = time.perf_counter() - started
  # After the process: Keras invalidates models built before others are
  # traced in a graph (see tff_brats/training/federated.py).
  tf.keras.utils.set_random_seed(seed)
  model = config.build_model()
  initial = tff.learning.models.ModelWeights(
    trainable=[v.numpy() for v in model.trainable_variables],
    non_trainable=[v.numpy() for v in model.non_trainable_variables],
  )
  state = process.set_model_weights(process.initialize(), initial)
  plain = _PlainRounds(model, config, aggregator, client_data, seed)
  plain.weights = [tf.constant(w) for w in initial.trainable]

  def tff_round(round_num):
    nonlocal state
    output = process.next(
      state, federated_setup.client_inputs(client_data, seed, round_num)
    )
    state = output.state
    train = output.metrics['client_work']['train']
    return {
      'steps': float(train['steps']),
      'loss_sum': float(train['loss_sum']),
    }

  samples = {'tff': [], 'plain': []}
  for round_num in range(warmup + rounds):
    timed = round_num >= warmup
    for side, call in (('tff', tff_round), ('plain', plain.run)):
      sample = federated_setup.timed(
        lambda c=call, r=round_num: c(r), worker_pid
      )
      if timed:
        samples[side].append(sample)
      machine.progress(
        f'round {round_num} {side}{"" if timed else " (warmup)"}: '
        f'{sample.wall:.2f} s, {sample.result["steps"]:.0f} steps, loss sum '
        f'{sample.result["loss_sum"]:.4f}'
      )
  steps = {s.result['steps'] for side in samples.values() for s in side}
  if len(steps) != 1:
    raise RuntimeError(
      f'Both sides must run the same local steps. Found {sorted(steps)}.'
    )
  result = {
    'parameters': int(sum(w.size for w in initial.trainable)),
    'update_megabytes': round(
      sum(w.nbytes for w in initial.trainable) / 2**20, 1
    ),
    'steps_per_round': steps.pop(),
    'process_build_seconds': round(build_seconds, 2),
    'tff': federated_setup.summary(samples['tff']),
    'plain': federated_setup.summary(samples['plain']),
    'losses': {
      side: [round(s.result['loss_sum'], 4) for s in side_samples]
      for side, side_samples in samples.items()
    },
  }
  if breakdown_calls:
    machine.progress('breakdown: state round trip')
    trips = [
      federated_setup.timed(
        lambda: process.get_model_weights(state), worker_pid
      )
      for _ in range(breakdown_calls + 1)
    ][1:]
    result['breakdown'] = {
      'state_round_trip': federated_setup.summary(trips),
      'what': (
        'process.get_model_weights(state): the learning state to the '
        'worker and the model weights back, no training'
      ),
    }
  result['worker'] = {
    'pid_status_after': federated_setup.pid_status(worker_pid),
    'driver_status_after': federated_setup.pid_status(),
  }
  return result


class _PlainRounds:
  """The reference: the same clients' work and mean in plain TensorFlow."""

  def __init__(self, model, config, aggregator, client_data, seed):
    self._client_data = client_data
    # Traced once, as the TFF side's dataset computation.
    self._make_dataset = in_process.dataset_function(config)
    self._seed = seed
    self._trainer = client_training.ClientTrainer(
      model,
      learning_rate=config.client_learning_rate,
      loss=config.loss,
      precision=config.precision,
    )
    mechanism = aggregator.mechanism
    self._privatize = None
    if not isinstance(mechanism, mechanisms.NoPrivacy):

      @tf.function
      def privatize(update, steps):
        return mechanism.privatize(update, steps)[0]

      self._privatize = privatize
    self.weights = None

  def run(self, round_num: int) -> dict[str, float]:
    """One round: every client trains in turn, then the server step."""
    total = None
    steps_sum = 0.0
    loss_sum = 0.0
    for index, (_, paths) in enumerate(self._client_data):
      key = fed_avg.client_data_key(self._seed, round_num, index)
      dataset = self._make_dataset(tf.constant(paths), tf.constant(key))
      out = self._trainer.train(self.weights, dataset)
      update, steps = out['update'], out['steps']
      if self._privatize is not None:
        update = self._privatize(update, steps)
      total = _accumulate(update, steps, total)
      steps_sum += float(steps)
      loss_sum += float(out['loss_sum'])
    self.weights = _server_step(
      self.weights, total, tf.constant(steps_sum, tf.float32)
    )
    return {'steps': steps_sum, 'loss_sum': loss_sum}


@tf.function
def _weighted(update, steps):
  return [steps * u for u in update]


@tf.function
def _add_weighted(total, update, steps):
  return [t + steps * u for t, u in zip(total, update, strict=True)]


def _accumulate(update, steps, total):
  if total is None:
    return _weighted(update, steps)
  return _add_weighted(total, update, steps)


@tf.function
def _server_step(weights, total, steps_sum):
  # Weighted mean of the updates, then SGD with learning rate 1.
  return [w - t / steps_sum for w, t in zip(weights, total, strict=True)]


if __name__ == '__main__':
  app.run(main)
