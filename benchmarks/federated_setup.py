"""What the federated benchmarks share: clients' data, aggregator, worker.

`prepare_clients` gives every client's TFRecord shard paths, from a folder
prepared by `experiments/prepare_data.py` or from a small synthetic data set
it writes with the library (`tff_brats.data.synthetic` NIfTI phantoms, then
`tff_brats.data.prepare`, one client per institution), as
`experiments/make_synthetic_brats.py` and `experiments/prepare_data.py` do.

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
from collections.abc import Iterator
import contextlib
import os
from typing import Any

import numpy as np

from tff_brats.aggregators import factories
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import prepare
from tff_brats.data import synthetic
from tff_brats.learning import fed_avg

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


def model_aggregator(privacy_mechanism: str, svt: dict[str, float]):
  """The weighted aggregator: plain mean, or SVT with `svt`'s parameters."""
  if privacy_mechanism not in PRIVACY_MECHANISMS:
    raise ValueError(
      f'privacy_mechanism must be one of {PRIVACY_MECHANISMS}. '
      f'Found {privacy_mechanism!r}.'
    )
  if privacy_mechanism == 'none':
    return factories.build_model_aggregator('none')
  return factories.build_model_aggregator('sparse_vector', **svt)


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
