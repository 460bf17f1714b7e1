"""What the federated benchmarks share: clients' data, aggregator, worker.

`prepare_clients` gives every client's TFRecord shard paths, from a folder
prepared by `experiments/prepare_data.py` or from a small synthetic data set
it writes with the library (`tff_brats.data.synthetic` NIfTI phantoms, then
`tff_brats.data.prepare`, one client per institution), as
`experiments/make_synthetic_brats.py` and `experiments/prepare_data.py` do.

`define_flags` and `flag_arguments` define and read the flags both
federated benchmarks take (data, model size, SVT, threads, worker, seed);
`run_on_worker` prepares the clients and starts the project's TFF worker
with its thread pools, and `thread_config` reports them.

`worker_threads` sets the thread pools of the TFF worker the benchmark
starts. `worker_binary` has no thread flags and TFF's C++ runtime creates
its sessions with default `SessionOptions` (intra- and inter-op threads
0, i.e. one per core), but TensorFlow reads `TF_NUM_INTRAOP_THREADS` and
`TF_NUM_INTEROP_THREADS` from the environment when a session's options
leave them at 0, and `tff_brats.runtime.worker` starts the worker with the
parent's environment.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from collections.abc import Iterator
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any

from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import machine
from tff_brats import mechanisms
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import prepare
from tff_brats.data import synthetic
from tff_brats.learning import fed_avg
from tff_brats.runtime import local
from tff_brats.runtime import worker as worker_lib

PRIVACY_MECHANISMS = ('none', 'sparse_vector')

# The README's example SVT run (q, γ, ε, ε3, τ); the cost of a round does
# not depend on the budgets.
SVT_DEFAULTS = {
  'shared_fraction': 0.1,
  'clip_bound': 1e-3,
  'selection_epsilon': 1e5,
  'release_epsilon': 1e5,
  'threshold': 5e-4,
}

_THREAD_VARIABLES = ('TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS')


def define_flags(
  *,
  clients: int,
  volume_size: int,
  crop_size: int,
  init_filters: int,
  privacy_mechanism: str,
) -> dict[str, flags.FlagHolder]:
  """Defines the flags both federated benchmarks take, with these defaults.

  Returns:
    The flag holders by name, for `flag_arguments`.
  """
  svt_help = {
    'shared_fraction': 'SVT q.',
    'clip_bound': 'SVT γ.',
    'selection_epsilon': 'SVT ε.',
    'release_epsilon': 'SVT ε3.',
    'threshold': 'SVT τ.',
  }
  holders = {
    'data_dir': flags.DEFINE_string(
      'data_dir',
      None,
      'A prepared folder (e.g. demo_output/prepared); default: write a '
      'synthetic one to a temporary folder.',
    ),
    'clients': flags.DEFINE_integer('clients', clients, 'Clients per round.'),
    'cases_per_client': flags.DEFINE_integer(
      'cases_per_client', 2, 'Synthetic cases per client (without --data_dir).'
    ),
    'volume_size': flags.DEFINE_integer(
      'volume_size',
      volume_size,
      'Edge of the synthetic volumes (without --data_dir).',
    ),
    'crop_size': flags.DEFINE_integer(
      'crop_size', crop_size, 'Cube crop edge length.'
    ),
    'init_filters': flags.DEFINE_integer(
      'init_filters', init_filters, 'SegResNet width.'
    ),
    'crops_per_case': flags.DEFINE_integer(
      'crops_per_case', 1, 'Crops per case read (steps per case).'
    ),
    'privacy_mechanism': flags.DEFINE_enum(
      'privacy_mechanism',
      privacy_mechanism,
      PRIVACY_MECHANISMS,
      'Client-side mechanism of the aggregator.',
    ),
    **{
      name: flags.DEFINE_float(name, SVT_DEFAULTS[name], svt_help[name])
      for name in SVT_DEFAULTS
    },
    'intra_op_threads': flags.DEFINE_integer(
      'intra_op_threads', 2, 'TensorFlow intra-op threads (0: TF default).'
    ),
    'inter_op_threads': flags.DEFINE_integer(
      'inter_op_threads', 1, 'TensorFlow inter-op threads (0: TF default).'
    ),
    'worker_intra_op_threads': flags.DEFINE_integer(
      'worker_intra_op_threads',
      -1,
      "The worker's intra-op threads (-1: as --intra_op_threads; 0: TF "
      'default).',
    ),
    'worker_inter_op_threads': flags.DEFINE_integer(
      'worker_inter_op_threads',
      -1,
      "The worker's inter-op threads (-1: as --inter_op_threads; 0: TF "
      'default).',
    ),
    'worker_max_concurrent_calls': flags.DEFINE_integer(
      'worker_max_concurrent_calls',
      -1,
      'Concurrent sessions per computation in the worker (clients trained '
      'at once); -1: no limit, as the trainer runs it.',
    ),
    'seed': flags.DEFINE_integer(
      'seed', 0, 'Seed of the data, the initial weights and the data keys.'
    ),
  }
  return holders


def flag_arguments(holders: dict[str, flags.FlagHolder]) -> dict[str, Any]:
  """The flags' values as `run_benchmark` arguments (SVT ones as `svt`)."""
  values = {name: holder.value for name, holder in holders.items()}
  values['svt'] = {name: values.pop(name) for name in SVT_DEFAULTS}
  return values


@contextlib.contextmanager
def run_on_worker(
  *,
  data_dir: str | None,
  clients: int,
  cases_per_client: int,
  volume_size: int,
  seed: int,
  intra_op_threads: int,
  inter_op_threads: int,
  worker_intra_op_threads: int,
  worker_inter_op_threads: int,
  worker_max_concurrent_calls: int,
) -> Iterator[tuple[list[tuple[str, list[str]]], int]]:
  """Sets threads, prepares the clients and starts the project's worker.

  This process's pools are set with `machine.set_threads`; the worker's
  are the `worker_*` numbers (-1: as this process's; 0: TF's default).

  Yields:
    `(client_data, worker_pid)`: `prepare_clients`' result and the pid of
    the running worker; on exit the worker is stopped and the temporary
    data deleted.
  """
  machine.set_threads(intra_op_threads, inter_op_threads)
  worker_intra, worker_inter = worker_thread_numbers(
    intra_op_threads,
    inter_op_threads,
    worker_intra_op_threads,
    worker_inter_op_threads,
  )
  work_dir = tempfile.mkdtemp(prefix='tff_brats-bench-')
  try:
    machine.progress('preparing data')
    client_data = prepare_clients(
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
      with worker_threads(worker_intra, worker_inter):
        stack.enter_context(runtime)
      yield client_data, runtime.worker_pid
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)


def worker_thread_numbers(
  intra: int, inter: int, worker_intra: int, worker_inter: int
) -> tuple[int, int]:
  """The worker's (intra, inter) pools: -1 means as this process's."""
  return (
    intra if worker_intra < 0 else worker_intra,
    inter if worker_inter < 0 else worker_inter,
  )


def thread_config(
  *,
  intra_op_threads: int,
  inter_op_threads: int,
  worker_intra_op_threads: int,
  worker_inter_op_threads: int,
  worker_max_concurrent_calls: int,
) -> dict[str, Any]:
  """The `config` entries on threads and the worker, for the JSON."""
  worker_intra, worker_inter = worker_thread_numbers(
    intra_op_threads,
    inter_op_threads,
    worker_intra_op_threads,
    worker_inter_op_threads,
  )
  threading = tf.config.threading
  default = 'TF default (one per core)'
  return {
    'intra_op_threads': threading.get_intra_op_parallelism_threads(),
    'inter_op_threads': threading.get_inter_op_parallelism_threads(),
    'worker_intra_op_threads': worker_intra or default,
    'worker_inter_op_threads': worker_inter or default,
    'worker_max_concurrent_calls': worker_max_concurrent_calls,
    'worker_malloc_arena_max': worker_lib.worker_environment()[
      'MALLOC_ARENA_MAX'
    ],
  }


def prepare_clients(
  *,
  data_dir: str | None,
  work_dir: str,
  num_clients: int,
  cases_per_client: int,
  volume_size: int,
  seed: int,
) -> list[tuple[str, list[str]]]:
  """`(client_id, shard_paths)` of the first `num_clients` clients.

  Args:
    data_dir: A prepared folder (manifest.json + shards), or None to write
      a synthetic one under `work_dir`.
    work_dir: Folder for the synthetic data (unused with `data_dir`).
    num_clients: Clients to use (>= 1).
    cases_per_client: Synthetic cases per client.
    volume_size: Edge of the synthetic volumes (>= 16).
    seed: Seed of the synthetic data.

  Raises:
    ValueError: `data_dir` has fewer than `num_clients` clients.
  """
  if num_clients < 1:
    raise ValueError(f'num_clients must be at least 1. Found {num_clients}.')
  if data_dir is None:
    raw_dir = os.path.join(work_dir, 'synthetic_brats')
    data_dir = os.path.join(work_dir, 'prepared')
    synthetic.generate_dataset(
      raw_dir,
      num_cases=num_clients * cases_per_client,
      num_institutions=num_clients,
      shape=(volume_size,) * 3,
      seed=seed,
      progress=False,
    )
    prepare.prepare_dataset(
      raw_dir, data_dir, partition='brats18_institutions', progress=False
    )
  prepared = manifest_lib.load(data_dir)
  client_ids = list(prepared.client_ids)
  if len(client_ids) < num_clients:
    raise ValueError(
      f'num_clients must be at most the {len(client_ids)} clients of '
      f'{prepared.root!r}. Found {num_clients}.'
    )
  return [(c, prepared.shard_paths(c)) for c in client_ids[:num_clients]]


def client_inputs(
  clients: list[tuple[str, list[str]]], seed: int, round_num: int
) -> list[collections.OrderedDict]:
  """The `next` argument of a round: shard paths and data key per client."""
  return [
    collections.OrderedDict(
      shard_paths=np.array(paths, dtype=object),
      data_key=fed_avg.client_data_key(seed, round_num, index),
    )
    for index, (_, paths) in enumerate(clients)
  ]


def privacy_mechanism(name: str, svt: dict[str, float]):
  """The mechanism `name`, with the parameters of `svt` it has."""
  cls = mechanisms.get(name)
  return cls.from_parameters(
    {k: v for k, v in svt.items() if k in cls.parameter_names()}
  )


def model_aggregator(name: str, svt: dict[str, float]):
  """The weighted aggregator of the mechanism `name` (see `privacy_mechanism`)."""
  return privacy_mechanism(name, svt).aggregation_factory()


@contextlib.contextmanager
def worker_threads(intra: int, inter: int) -> Iterator[None]:
  """Sets the thread pools of workers started inside (0: TF's default).

  Only processes started within the block see the variables; they are
  restored on exit (this process's own pools are set explicitly by
  `machine.set_threads`, which the variables do not override).
  """
  saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
  try:
    for name, value in zip(_THREAD_VARIABLES, (intra, inter), strict=True):
      if value > 0:
        os.environ[name] = str(value)
      else:
        os.environ.pop(name, None)
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


def pid_cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of process `pid` (Linux /proc)."""
  with open(f'/proc/{pid}/stat') as f:
    # Fields after the command name, which may contain spaces.
    fields = f.read().rsplit(')', 1)[1].split()
  return (float(fields[11]) + float(fields[12])) / os.sysconf('SC_CLK_TCK')


def pid_status(pid: int | str = 'self') -> dict[str, Any]:
  """VmRSS, VmHWM (peak RSS) in MiB and Threads of process `pid`."""
  values = {}
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      key, _, value = line.partition(':')
      if key in ('VmRSS', 'VmHWM'):
        values[f'{key.lower()}_mib'] = round(int(value.split()[0]) / 1024, 1)
      elif key == 'Threads':
        values['threads'] = int(value)
  return values


@dataclasses.dataclass
class Sample:
  """One timed call: wall and CPU seconds, machine ticks during it."""

  wall: float
  cpu: float
  worker_cpu: float
  busy_ticks: float
  total_ticks: float
  result: Any


def timed(call: Callable[[], Any], worker_pid: int) -> Sample:
  busy, total = machine.machine_cpu_ticks()
  worker_cpu = pid_cpu_seconds(worker_pid)
  cpu = machine.process_cpu_seconds()
  start = time.perf_counter()
  result = call()
  wall = time.perf_counter() - start
  cpu = machine.process_cpu_seconds() - cpu
  worker_cpu = pid_cpu_seconds(worker_pid) - worker_cpu
  busy_after, total_after = machine.machine_cpu_ticks()
  return Sample(
    wall, cpu, worker_cpu, busy_after - busy, total_after - total, result
  )


def summary(samples: list[Sample]) -> dict[str, Any]:
  """Wall, CPU and machine shares of a side's timed calls."""
  wall = [s.wall for s in samples]
  tick = os.sysconf('SC_CLK_TCK')
  total = sum(s.total_ticks for s in samples)
  busy = sum(s.busy_ticks for s in samples)
  own = sum(s.cpu for s in samples) * tick
  worker = sum(s.worker_cpu for s in samples) * tick
  background = max(busy - own, 0.0) / total if total else 0.0
  worker_share = worker / total if total else 0.0
  return {
    'median_seconds': round(float(np.median(wall)), 3),
    'min_seconds': round(min(wall), 3),
    'max_seconds': round(max(wall), 3),
    'round_seconds': [round(t, 3) for t in wall],
    'cpu_seconds_per_round': round(
      float(np.median([s.cpu for s in samples])), 3
    ),
    'worker_cpu_seconds_per_round': round(
      float(np.median([s.worker_cpu for s in samples])), 3
    ),
    'cores_used': round(
      float(np.median([(s.cpu + s.worker_cpu) / s.wall for s in samples])), 2
    ),
    'background_cpu_fraction': round(background, 3),
    'worker_cpu_fraction': round(worker_share, 3),
    'other_cpu_fraction': round(max(background - worker_share, 0.0), 3),
  }
