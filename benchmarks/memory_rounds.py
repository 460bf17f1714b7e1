"""Benchmarks memory over many federated rounds: driver and TFF worker RSS.

Runs `--rounds` rounds of the project's learning process
(`tff_brats.learning.fed_avg.build_fed_avg_process`, SVT privacy by
default) in a tiny configuration on the project's local C++ worker
(`tff_brats.runtime.local.LocalRuntime`) and, after every round, reads
`VmRSS` (resident memory now) and `VmHWM` (its peak so far) from
/proc/<pid>/status for the driver (this process) and the worker
(`LocalRuntime.worker_pid`). Round 0 is the state after `initialize` and
`set_model_weights`.

The first rounds allocate what every later round reuses (traced graphs,
TF sessions in the worker, allocator pools), so growth is measured from
the end of round `--baseline_round` (default 5). `peak_growth_percent`
(the issue's measure; target <= 5% for both processes) is the growth of
the peak resident memory, VmHWM, from then to the end of the run;
`rss_growth_percent` is the stricter (largest RSS after it − RSS at it) /
RSS at it × 100, and `slope_mib_per_round` the slope of a least-squares
line through the RSS after it.

The worker is linked against glibc's malloc, which gives busy threads
arenas of their own; `tff_brats.runtime.worker` starts it with
`MALLOC_ARENA_MAX=1` unless the environment sets another value (recorded
as `config.malloc_arena_max`, the worker's effective value), so running
the benchmark under e.g. `MALLOC_ARENA_MAX=8` shows the growth without
the cap, and `--worker_max_concurrent_calls=1` how much comes from
training clients concurrently.

Example (threads are set before TensorFlow starts):

  TF_CPP_MIN_LOG_LEVEL=2 python -m benchmarks.memory_rounds --rounds=50

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from benchmarks import federated_setup
from benchmarks import machine
from tff_brats.learning import fed_avg
from tff_brats.runtime import local
from tff_brats.runtime import worker as worker_lib

TARGET_GROWTH_PERCENT = 5.0

_DATA_DIR = flags.DEFINE_string(
  'data_dir',
  None,
  'A prepared folder; default: write a synthetic one to a temporary folder.',
)
_CLIENTS = flags.DEFINE_integer('clients', 3, 'Clients per round.')
_CASES_PER_CLIENT = flags.DEFINE_integer(
  'cases_per_client', 2, 'Synthetic cases per client (without --data_dir).'
)
_VOLUME_SIZE = flags.DEFINE_integer(
  'volume_size', 32, 'Edge of the synthetic volumes (without --data_dir).'
)
_CROP_SIZE = flags.DEFINE_integer('crop_size', 16, 'Cube crop edge length.')
_INIT_FILTERS = flags.DEFINE_integer('init_filters', 8, 'SegResNet width.')
_CROPS_PER_CASE = flags.DEFINE_integer(
  'crops_per_case', 1, 'Crops per case read (steps per case).'
)
_PRIVACY_MECHANISM = flags.DEFINE_enum(
  'privacy_mechanism',
  'sparse_vector',
  federated_setup.PRIVACY_MECHANISMS,
  'Client-side mechanism of the aggregator.',
)
_SHARED_FRACTION = flags.DEFINE_float(
  'shared_fraction', federated_setup.SVT_DEFAULTS['shared_fraction'], 'SVT q.'
)
_CLIP_BOUND = flags.DEFINE_float(
  'clip_bound', federated_setup.SVT_DEFAULTS['clip_bound'], 'SVT γ.'
)
_SELECTION_EPSILON = flags.DEFINE_float(
  'selection_epsilon',
  federated_setup.SVT_DEFAULTS['selection_epsilon'],
  'SVT ε.',
)
_RELEASE_EPSILON = flags.DEFINE_float(
  'release_epsilon', federated_setup.SVT_DEFAULTS['release_epsilon'], 'SVT ε3.'
)
_THRESHOLD = flags.DEFINE_float(
  'threshold', federated_setup.SVT_DEFAULTS['threshold'], 'SVT τ.'
)
_ROUNDS = flags.DEFINE_integer('rounds', 50, 'Rounds to run.')
_BASELINE_ROUND = flags.DEFINE_integer(
  'baseline_round', 5, 'Growth is measured from the end of this round.'
)
_INTRA_OP_THREADS = flags.DEFINE_integer(
  'intra_op_threads', 2, 'TensorFlow intra-op threads (0: TF default).'
)
_INTER_OP_THREADS = flags.DEFINE_integer(
  'inter_op_threads', 1, 'TensorFlow inter-op threads (0: TF default).'
)
_WORKER_INTRA_OP_THREADS = flags.DEFINE_integer(
  'worker_intra_op_threads',
  -1,
  "The worker's intra-op threads (-1: as --intra_op_threads; 0: TF default).",
)
_WORKER_INTER_OP_THREADS = flags.DEFINE_integer(
  'worker_inter_op_threads',
  -1,
  "The worker's inter-op threads (-1: as --inter_op_threads; 0: TF default).",
)
_WORKER_MAX_CONCURRENT_CALLS = flags.DEFINE_integer(
  'worker_max_concurrent_calls',
  -1,
  'Concurrent sessions per computation in the worker (clients trained at '
  'once); -1: no limit, as the trainer runs it.',
)
_SEED = flags.DEFINE_integer(
  'seed', 0, 'Seed of the data, the initial weights and the data keys.'
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = run_benchmark(
      data_dir=_DATA_DIR.value,
      clients=_CLIENTS.value,
      cases_per_client=_CASES_PER_CLIENT.value,
      volume_size=_VOLUME_SIZE.value,
      crop_size=_CROP_SIZE.value,
      init_filters=_INIT_FILTERS.value,
      crops_per_case=_CROPS_PER_CASE.value,
      privacy_mechanism=_PRIVACY_MECHANISM.value,
      svt={
        'shared_fraction': _SHARED_FRACTION.value,
        'clip_bound': _CLIP_BOUND.value,
        'selection_epsilon': _SELECTION_EPSILON.value,
        'release_epsilon': _RELEASE_EPSILON.value,
        'threshold': _THRESHOLD.value,
      },
      rounds=_ROUNDS.value,
      baseline_round=_BASELINE_ROUND.value,
      intra_op_threads=_INTRA_OP_THREADS.value,
      inter_op_threads=_INTER_OP_THREADS.value,
      worker_intra_op_threads=_WORKER_INTRA_OP_THREADS.value,
      worker_inter_op_threads=_WORKER_INTER_OP_THREADS.value,
      worker_max_concurrent_calls=_WORKER_MAX_CONCURRENT_CALLS.value,
      seed=_SEED.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  json.dump(result, sys.stdout, indent=1)
  sys.stdout.write('\n')


def run_benchmark(
  *,
  data_dir: str | None = None,
  clients: int = 3,
  cases_per_client: int = 2,
  volume_size: int = 32,
  crop_size: int = 16,
  init_filters: int = 8,
  crops_per_case: int = 1,
  privacy_mechanism: str = 'sparse_vector',
  svt: dict[str, float] | None = None,
  rounds: int = 50,
  baseline_round: int = 5,
  intra_op_threads: int = 2,
  inter_op_threads: int = 1,
  worker_intra_op_threads: int = -1,
  worker_inter_op_threads: int = -1,
  worker_max_concurrent_calls: int = -1,
  seed: int = 0,
) -> dict[str, Any]:
  """Runs `rounds` rounds and records both processes' memory after each.

  Returns:
    A JSON-serialisable dict: `config`, `round_seconds`, and `driver` and
    `worker`, each with per-round `rss_mib` and `hwm_mib` (index 0: before
    the first round), the peak and RSS growth after `baseline_round`
    (see `_memory_summary`) and whether the peak's growth is within
    `target_growth_percent`.

  Raises:
    ValueError: An argument is invalid.
  """
  if not 1 <= baseline_round < rounds:
    raise ValueError(
      f'baseline_round must be in [1, rounds - 1] = [1, {rounds - 1}]. '
      f'Found {baseline_round}.'
    )
  svt = dict(federated_setup.SVT_DEFAULTS if svt is None else svt)
  config = fed_avg.ClientConfig(
    model_config={'init_filters': init_filters},
    crop_size=(crop_size,) * 3,
    crops_per_case=crops_per_case,
  )
  aggregator = federated_setup.model_aggregator(privacy_mechanism, svt)
  machine.set_threads(intra_op_threads, inter_op_threads)
  worker_intra = (
    intra_op_threads if worker_intra_op_threads < 0 else worker_intra_op_threads
  )
  worker_inter = (
    inter_op_threads if worker_inter_op_threads < 0 else worker_inter_op_threads
  )
  work_dir = tempfile.mkdtemp(prefix='tff_brats-bench-memory-')
  try:
    _progress('preparing data')
    client_data = federated_setup.prepare_clients(
      data_dir=data_dir,
      work_dir=work_dir,
      num_clients=clients,
      cases_per_client=cases_per_client,
      volume_size=volume_size,
      seed=seed,
    )
    runtime = local.LocalRuntime(
      default_num_clients=clients,
      max_concurrent_computation_calls=worker_max_concurrent_calls,
    )
    with contextlib.ExitStack() as stack:
      # Only the worker sees the thread variables.
      with federated_setup.worker_threads(worker_intra, worker_inter):
        stack.enter_context(runtime)
      series = _run_rounds(
        runtime.worker_pid, config, aggregator, client_data, rounds, seed
      )
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)

  threading = tf.config.threading
  return {
    'benchmark': 'memory_rounds',
    'config': {
      'tensorflow': tf.__version__,
      'tensorflow_federated': tff.__version__,
      'cpu_count': os.cpu_count(),
      'cpu': machine.cpu_model(),
      'intra_op_threads': threading.get_intra_op_parallelism_threads(),
      'inter_op_threads': threading.get_inter_op_parallelism_threads(),
      'worker_intra_op_threads': worker_intra or 'TF default (one per core)',
      'worker_inter_op_threads': worker_inter or 'TF default (one per core)',
      'worker_max_concurrent_calls': worker_max_concurrent_calls,
      'malloc_arena_max': worker_lib.worker_environment()['MALLOC_ARENA_MAX'],
      'data_dir': data_dir or 'synthetic (temporary)',
      'clients': clients,
      'cases_per_client': None if data_dir else cases_per_client,
      'volume_size': None if data_dir else volume_size,
      'crop_size': crop_size,
      'init_filters': init_filters,
      'crops_per_case': crops_per_case,
      'privacy_mechanism': privacy_mechanism,
      'svt': svt if privacy_mechanism == 'sparse_vector' else None,
      'rounds': rounds,
      'baseline_round': baseline_round,
      'seed': seed,
    },
    'steps_per_round': series['steps'],
    'round_seconds': {
      'median': round(float(np.median(series['seconds'])), 3),
      'per_round': [round(s, 3) for s in series['seconds']],
    },
    'target_growth_percent': TARGET_GROWTH_PERCENT,
    'driver': _memory_summary(series['driver'], baseline_round),
    'worker': _memory_summary(series['worker'], baseline_round),
  }


def _run_rounds(worker_pid, config, aggregator, client_data, rounds, seed):
  """Runs the rounds; returns per-round seconds, steps and /proc status."""
  _progress('building the learning process')
  process = fed_avg.build_fed_avg_process(config, aggregator)
  # After the process: Keras invalidates models built before others are
  # traced in a graph (see tff_brats/training/federated.py).
  tf.keras.utils.set_random_seed(seed)
  model = config.build_model()
  initial = tff.learning.models.ModelWeights(
    trainable=[v.numpy() for v in model.trainable_variables],
    non_trainable=[v.numpy() for v in model.non_trainable_variables],
  )
  del model
  state = process.set_model_weights(process.initialize(), initial)
  del initial
  series = {
    'seconds': [],
    'steps': set(),
    'driver': [federated_setup.pid_status()],
    'worker': [federated_setup.pid_status(worker_pid)],
  }
  for round_num in range(1, rounds + 1):
    started = time.perf_counter()
    output = process.next(
      state, federated_setup.client_inputs(client_data, seed, round_num)
    )
    state = output.state
    series['seconds'].append(time.perf_counter() - started)
    series['steps'].add(float(output.metrics['client_work']['train']['steps']))
    del output
    series['driver'].append(federated_setup.pid_status())
    series['worker'].append(federated_setup.pid_status(worker_pid))
    _progress(
      f'round {round_num}: {series["seconds"][-1]:.2f} s, driver RSS '
      f'{series["driver"][-1]["vmrss_mib"]} MiB, worker RSS '
      f'{series["worker"][-1]["vmrss_mib"]} MiB'
    )
  series['steps'] = sorted(series['steps'])
  return series


def _memory_summary(statuses, baseline_round):
  """RSS/HWM series and growth after `baseline_round` (index = round).

  `peak_growth_percent` is the issue's measure: the growth of the peak
  resident memory (VmHWM) from the end of `baseline_round` to the end of
  the run. `rss_growth_percent` is the stricter one: the largest RSS after
  `baseline_round` against the RSS at it, so an allocator's swings within
  its earlier peak count as growth too.
  """
  rss = [s['vmrss_mib'] for s in statuses]
  hwm = [s['vmhwm_mib'] for s in statuses]
  base = rss[baseline_round]
  largest = max(rss[baseline_round + 1 :])
  rss_growth = 100.0 * (largest - base) / base
  peak_growth = 100.0 * (hwm[-1] - hwm[baseline_round]) / hwm[baseline_round]
  rounds_after = np.arange(baseline_round, len(rss))
  slope = np.polyfit(rounds_after, rss[baseline_round:], 1)[0]
  return {
    'rss_mib': rss,
    'hwm_mib': hwm,
    'threads': [s['threads'] for s in statuses],
    'peak_at_baseline_mib': hwm[baseline_round],
    'final_peak_mib': hwm[-1],
    'peak_growth_percent': round(peak_growth, 2),
    'rss_after_baseline_mib': base,
    'max_rss_after_baseline_mib': largest,
    'final_rss_mib': rss[-1],
    'rss_growth_percent': round(rss_growth, 2),
    'final_rss_growth_percent': round(100.0 * (rss[-1] - base) / base, 2),
    'slope_mib_per_round': round(float(slope), 3),
    'within_target': peak_growth <= TARGET_GROWTH_PERCENT,
  }


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


if __name__ == '__main__':
  app.run(main)
