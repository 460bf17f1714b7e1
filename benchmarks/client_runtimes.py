"""Benchmarks the two client runtimes: one federated round each, as a ratio.

Worker side: `fed_avg.build_fed_avg_process`'s `next` on the project's
local C++ worker. Every client builds its data, trains, and is privatised
inside the worker (clients run concurrently there).

In-process side: `in_process.InProcessLearningProcess`'s `next`. Clients
train in this process with `ClientTrainer`, one per training device at a
time. On this machine that is the CPU, so one client after another. Their
results then go to the same TFF aggregation and privacy on the same worker.

Both sides start from the same weights and see the same data keys in round
r, so they do the same local steps on the same crops; the losses in the
output show it. Rounds alternate (worker round r, then in-process round r),
so a change in the shared machine's load hits both sides. `--warmup` pairs
run first, untimed.

`ratio` is the median in-process round over the median worker round. On a
CPU this shows what moving the training out of the worker costs or saves;
on a GPU machine the in-process side trains on the GPUs and the worker side
stays on the CPU.

Example (threads are set before TensorFlow starts):

  TF_CPP_MIN_LOG_LEVEL=2 python -m benchmarks.client_runtimes \
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
from tff_brats.learning import fed_avg
from tff_brats.learning import in_process
from tff_brats.runtime import devices

_COMMON = federated_setup.define_flags(
  clients=4,
  volume_size=64,
  crop_size=64,
  init_filters=16,
  privacy_mechanism='none',
)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds per side.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed rounds per side first.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = run_benchmark(
      **federated_setup.flag_arguments(_COMMON),
      rounds=_ROUNDS.value,
      warmup=_WARMUP.value,
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
  crops_per_case: int = 1,
  privacy_mechanism: str = 'none',
  svt: dict[str, float] | None = None,
  rounds: int = 3,
  warmup: int = 1,
  intra_op_threads: int = 2,
  inter_op_threads: int = 1,
  worker_intra_op_threads: int = -1,
  worker_inter_op_threads: int = -1,
  worker_max_concurrent_calls: int = -1,
  seed: int = 0,
) -> dict[str, Any]:
  """Times `rounds` rounds of each runtime, alternating.

  Returns:
    A JSON-serialisable dict: `config`, `devices` (the in-process side's),
    `worker` and `in_process` (per-round wall seconds, median/min/max, CPU
    seconds of this process and of the worker), `ratio` (median in-process
    / median worker) and `losses` (per round and side).

  Raises:
    ValueError: An argument is invalid.
  """
  for name, value in (('clients', clients), ('rounds', rounds)):
    if value < 1:
      raise ValueError(f'{name} must be a positive integer. Found {value}.')
  if warmup < 0:
    raise ValueError(f'warmup must be non-negative. Found {warmup}.')
  svt = dict(federated_setup.SVT_DEFAULTS if svt is None else svt)
  config = fed_avg.ClientConfig(
    model_config={'init_filters': init_filters},
    crop_size=(crop_size,) * 3,
    crops_per_case=crops_per_case,
    # Both sides' losses show that they train alike.
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
  devices.configure_gpus()
  with federated_setup.run_on_worker(
    data_dir=data_dir,
    clients=clients,
    cases_per_client=cases_per_client,
    volume_size=volume_size,
    seed=seed,
    **threads,
  ) as (client_data, worker_pid):
    measured = _measure(
      worker_pid, config, aggregator, client_data, rounds, warmup, seed
    )
  return {
    'benchmark': 'client_runtimes',
    'config': {
      'tensorflow': tf.__version__,
      'tensorflow_federated': tff.__version__,
      'onednn': machine.onednn_enabled(),
      'cpu_count': os.cpu_count(),
      'cpu': machine.cpu_model(),
      **federated_setup.thread_config(**threads),
      'data_dir': data_dir or 'synthetic (temporary)',
      'clients': clients,
      'cases_per_client': None if data_dir else cases_per_client,
      'volume_size': None if data_dir else volume_size,
      'crop_size': crop_size,
      'init_filters': init_filters,
      'crops_per_case': crops_per_case,
      'privacy_mechanism': privacy_mechanism,
      'warmup_rounds': warmup,
      'timed_rounds': rounds,
      'seed': seed,
    },
    **measured,
    'ratio': round(
      measured['in_process']['median_seconds']
      / measured['worker']['median_seconds'],
      3,
    ),
  }


def _measure(worker_pid, config, aggregator, client_data, rounds, warmup, seed):
  machine.progress('building both learning processes')
  started = time.perf_counter()
  processes = {
    'worker': fed_avg.build_fed_avg_process(config, aggregator),
    'in_process': in_process.InProcessLearningProcess(config, aggregator),
  }
  build_seconds = time.perf_counter() - started
  # After the processes (see in_process.ClientPool.trainers).
  tf.keras.utils.set_random_seed(seed)
  model = config.build_model()
  initial = tff.learning.models.ModelWeights(
    trainable=[v.numpy() for v in model.trainable_variables],
    non_trainable=[v.numpy() for v in model.non_trainable_variables],
  )
  states = {
    side: p.set_model_weights(p.initialize(), initial)
    for side, p in processes.items()
  }

  def one_round(side, round_num):
    output = processes[side].next(
      states[side], federated_setup.client_inputs(client_data, seed, round_num)
    )
    states[side] = output.state
    train = output.metrics['client_work']['train']
    return {
      'steps': float(train['steps']),
      'loss_sum': float(train['loss_sum']),
    }

  samples = {side: [] for side in processes}
  for round_num in range(warmup + rounds):
    timed = round_num >= warmup
    for side in processes:
      sample = federated_setup.timed(
        lambda s=side, r=round_num: one_round(s, r), worker_pid
      )
      if timed:
        samples[side].append(sample)
      machine.progress(
        f'round {round_num} {side}{"" if timed else " (warmup)"}: '
        f'{sample.wall:.2f} s, {sample.result["steps"]:.0f} steps, loss sum '
        f'{sample.result["loss_sum"]:.4f}'
      )
  return {
    'devices': processes['in_process'].pool.devices,
    'parameters': int(sum(w.size for w in initial.trainable)),
    'process_build_seconds': round(build_seconds, 2),
    'worker': federated_setup.summary(samples['worker']),
    'in_process': federated_setup.summary(samples['in_process']),
    'losses': {
      side: [round(s.result['loss_sum'], 4) for s in side_samples]
      for side, side_samples in samples.items()
    },
  }


if __name__ == '__main__':
  app.run(main)
