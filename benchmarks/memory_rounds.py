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
`MALLOC_ARENA_MAX=1` unless the environment sets another value
(recorded as `config.worker_malloc_arena_max`, the worker's effective
value), so running the benchmark under e.g. `MALLOC_ARENA_MAX=16` shows
the growth without the cap, and `--worker_max_concurrent_calls=1` how much comes from
training clients concurrently.

Time per round gets the same treatment: `round_seconds.growth_percent` is
the median of the last `--window` rounds against the median of the
`--window` rounds after `--baseline_round` (target <= 5% as well), and
`round_seconds.trend_growth_percent` the rise of a Theil–Sen line through
every round after it (a drift over the whole run, not a slow swing of a
shared machine).
`--plot=FILE.png` draws both processes' RSS and peak, and the seconds per
round, against the round.

Example (threads are set before TensorFlow starts):

  TF_CPP_MIN_LOG_LEVEL=2 python -m benchmarks.memory_rounds --rounds=50
  TF_CPP_MIN_LOG_LEVEL=2 python -m benchmarks.memory_rounds --rounds=500 \
    --plot=long_run.png

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
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from benchmarks import federated_setup
from benchmarks import machine
from tff_brats.learning import fed_avg

TARGET_GROWTH_PERCENT = 5.0

_COMMON = federated_setup.define_flags(
  clients=3,
  volume_size=32,
  crop_size=16,
  init_filters=8,
  privacy_mechanism='sparse_vector',
)
_ROUNDS = flags.DEFINE_integer('rounds', 50, 'Rounds to run.')
_BASELINE_ROUND = flags.DEFINE_integer(
  'baseline_round', 5, 'Growth is measured from the end of this round.'
)
_WINDOW = flags.DEFINE_integer(
  'window', 50, 'Rounds in each median of the time-per-round comparison.'
)
_PLOT = flags.DEFINE_string(
  'plot', None, 'PNG of memory and seconds per round (optional).'
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = run_benchmark(
      **federated_setup.flag_arguments(_COMMON),
      rounds=_ROUNDS.value,
      baseline_round=_BASELINE_ROUND.value,
      window=_WINDOW.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _PLOT.value:
    result['plot'] = write_plot(result, _PLOT.value)
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
  window: int | None = None,
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
  after = rounds - baseline_round
  window = after // 2 if window is None else window
  if not 1 <= window <= after // 2:
    raise ValueError(
      f'window must be in [1, (rounds - baseline_round) // 2] = '
      f'[1, {after // 2}]. Found {window}.'
    )
  svt = dict(federated_setup.SVT_DEFAULTS if svt is None else svt)
  config = fed_avg.ClientConfig(
    model_config={'init_filters': init_filters},
    crop_size=(crop_size,) * 3,
    crops_per_case=crops_per_case,
  )
  aggregator = federated_setup.model_aggregator(privacy_mechanism, svt)
  threads = dict(
    intra_op_threads=intra_op_threads,
    inter_op_threads=inter_op_threads,
    worker_intra_op_threads=worker_intra_op_threads,
    worker_inter_op_threads=worker_inter_op_threads,
    worker_max_concurrent_calls=worker_max_concurrent_calls,
  )
  with federated_setup.run_on_worker(
    data_dir=data_dir,
    clients=clients,
    cases_per_client=cases_per_client,
    volume_size=volume_size,
    seed=seed,
    **threads,
  ) as (client_data, worker_pid):
    series = _run_rounds(
      worker_pid, config, aggregator, client_data, rounds, seed
    )

  return {
    'benchmark': 'memory_rounds',
    'config': {
      'tensorflow': tf.__version__,
      'tensorflow_federated': tff.__version__,
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
      'mechanism': federated_setup.privacy_mechanism(
        privacy_mechanism, svt
      ).to_dict(),
      'rounds': rounds,
      'baseline_round': baseline_round,
      'seed': seed,
    },
    'steps_per_round': series['steps'],
    'round_seconds': _time_summary(series['seconds'], baseline_round, window),
    'target_growth_percent': TARGET_GROWTH_PERCENT,
    'driver': _memory_summary(series['driver'], baseline_round),
    'worker': _memory_summary(series['worker'], baseline_round),
  }


def _run_rounds(worker_pid, config, aggregator, client_data, rounds, seed):
  """Runs the rounds; returns per-round seconds, steps and /proc status."""
  machine.progress('building the learning process')
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
    machine.progress(
      f'round {round_num}: {series["seconds"][-1]:.2f} s, driver RSS '
      f'{series["driver"][-1]["vmrss_mib"]} MiB, worker RSS '
      f'{series["worker"][-1]["vmrss_mib"]} MiB'
    )
  series['steps'] = sorted(series['steps'])
  return series


def _time_summary(seconds, baseline_round, window):
  """Seconds per round, and the growth of its median over the run.

  `seconds[i]` is round i + 1. The first window is the `window` rounds
  after `baseline_round`, the last the run's final `window` rounds;
  `growth_percent` (the target's measure) compares their medians. A shared
  machine's slow swings (minutes long) move either median; the
  Theil–Sen line through every round after `baseline_round` (the median of
  all pairwise slopes, unmoved by up to 29 % of outlying rounds) shows
  whether time drifts over the whole run: `trend_growth_percent` is its
  rise from the first to the last of those rounds, relative to its start.
  """
  from scipy import stats

  first = seconds[baseline_round : baseline_round + window]
  last = seconds[-window:]
  first_median = float(np.median(first))
  last_median = float(np.median(last))
  growth = 100.0 * (last_median - first_median) / first_median
  after = np.asarray(seconds[baseline_round:], float)
  rounds_after = np.arange(baseline_round + 1, len(seconds) + 1)
  slope, intercept, _, _ = stats.theilslopes(after, rounds_after)
  start = intercept + slope * rounds_after[0]
  end = intercept + slope * rounds_after[-1]
  return {
    'median': round(float(np.median(seconds)), 3),
    'window': window,
    'first_window_median': round(first_median, 3),
    'last_window_median': round(last_median, 3),
    'growth_percent': round(growth, 2),
    'within_target': growth <= TARGET_GROWTH_PERCENT,
    'trend_seconds_per_100_rounds': round(float(100 * slope), 4),
    'trend_growth_percent': round(float(100.0 * (end - start) / start), 2),
    'per_round': [round(s, 3) for s in seconds],
  }


def write_plot(result: dict[str, Any], path: str) -> str:
  """Draws memory and seconds per round against the round; returns `path`."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  from tff_brats.utils import atomic

  fig, (memory, seconds) = plt.subplots(
    2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1)
  )
  try:
    for name, colour in (('worker', 'tab:blue'), ('driver', 'tab:orange')):
      summary = result[name]
      rounds = np.arange(len(summary['rss_mib']))
      memory.plot(
        rounds, summary['rss_mib'], color=colour, lw=1, label=f'{name} RSS'
      )
      memory.plot(
        rounds,
        summary['hwm_mib'],
        color=colour,
        lw=1,
        ls='--',
        label=f'{name} peak',
      )
    baseline = result['config']['baseline_round']
    memory.axvline(baseline, color='grey', lw=0.8, ls=':', label='warm-up end')
    memory.set_ylabel('resident memory (MiB)')
    memory.legend(fontsize='small', ncol=3)
    memory.grid(alpha=0.3)
    memory.set_title(
      f'{result["config"]["rounds"]} rounds: peak growth after round '
      f'{baseline} {result["worker"]["peak_growth_percent"]} % (worker), '
      f'{result["driver"]["peak_growth_percent"]} % (driver)',
      fontsize='medium',
    )
    per_round = result['round_seconds']['per_round']
    rounds = np.arange(1, len(per_round) + 1)
    seconds.plot(rounds, per_round, color='tab:green', lw=0.6, label='round')
    width = result['round_seconds']['window']
    if len(per_round) >= width:
      medians = [
        np.median(per_round[max(0, i - width + 1) : i + 1])
        for i in range(len(per_round))
      ]
      seconds.plot(
        rounds, medians, color='black', lw=1.2, label=f'median of {width}'
      )
    # The warm-up rounds (tracing) would squash the rest: clip them.
    seconds.set_ylim(0, 1.5 * max(per_round[baseline:]))
    seconds.set_xlabel('round')
    seconds.set_ylabel('seconds (warm-up clipped)')
    seconds.legend(fontsize='small')
    seconds.grid(alpha=0.3)
    fig.tight_layout()
    with atomic.staged_file(path) as tmp:
      fig.savefig(tmp, dpi=100, format='png')
  finally:
    plt.close(fig)
  return path


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


if __name__ == '__main__':
  app.run(main)
