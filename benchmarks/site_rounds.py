"""Benchmarks rounds per hour with the clients on 1, 2 and 3 sites.

The same federated round (the project's learning process, K clients) runs
with the clients split over n site workers on this machine, for each n in
`--sites`. Each site is what `experiments/run_site.py` runs: a TFF worker in
its private network namespace, in a serving folder with its institutions,
behind a TLS terminator with mutual TLS (certificates made here), reached
on 127.0.0.1. The clients are dealt to the sites in order (site k serves
clients k, k + n, ...). The coordinator runs the round in TFF's mergeable
form (`tff_brats.runtime.sites`); the merge and the server step run on its
own local worker. For reference, `local` is the same round on one local
worker without sites or TLS, as the trainer runs it by default.

On one machine the sites share its cores, so more sites cannot train
faster. What this measures is the cost of the split, of the TLS and of the
merges, against the local round. Across hosts each site brings its own
cores.

Example:

  TF_CPP_MIN_LOG_LEVEL=2 python -m benchmarks.site_rounds \
    --clients=3 --crop_size=32 --rounds=3 --warmup=1 --sites=1,2,3

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import json
import os
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np
import portpicker
import tensorflow as tf
import tensorflow_federated as tff

from benchmarks import federated_setup
from benchmarks import machine
from tff_brats.learning import fed_avg
from tff_brats.runtime import certificates
from tff_brats.runtime import local
from tff_brats.runtime import sites as sites_lib
from tff_brats.runtime import tls
from tff_brats.runtime import worker as worker_lib

_COMMON = federated_setup.define_flags(
  clients=3,
  volume_size=48,
  crop_size=32,
  init_filters=16,
  privacy_mechanism='sparse_vector',
)
_SITES = flags.DEFINE_list('sites', ['1', '2', '3'], 'Site counts to measure.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed rounds first.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  arguments = federated_setup.flag_arguments(_COMMON)
  try:
    site_counts = [int(n) for n in _SITES.value]
    result = run_benchmark(
      **arguments,
      site_counts=site_counts,
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
  clients: int = 3,
  cases_per_client: int = 2,
  volume_size: int = 48,
  crop_size: int = 32,
  init_filters: int = 16,
  crops_per_case: int = 1,
  privacy_mechanism: str = 'sparse_vector',
  svt: dict[str, float] | None = None,
  site_counts: Sequence[int] = (1, 2, 3),
  rounds: int = 3,
  warmup: int = 1,
  intra_op_threads: int = 2,
  inter_op_threads: int = 1,
  worker_intra_op_threads: int = -1,
  worker_inter_op_threads: int = -1,
  worker_max_concurrent_calls: int = -1,
  seed: int = 0,
) -> dict[str, Any]:
  """Times `rounds` rounds locally and with each number of sites.

  Returns:
    A JSON-serialisable dict: `config`, and per setting ('local', '1 sites',
    ...) the round seconds, their median and `rounds_per_hour`.

  Raises:
    ValueError: A site count outside [1, clients], or another bad argument.
  """
  if rounds < 1 or warmup < 0:
    raise ValueError(
      f'rounds must be >= 1 and warmup >= 0. Found {rounds}, {warmup}.'
    )
  for n in site_counts:
    if not 1 <= n <= clients:
      raise ValueError(
        f'site counts must be in [1, clients={clients}]. Found {n}.'
      )
  del worker_inter_op_threads, worker_intra_op_threads  # TF's defaults
  machine.set_threads(intra_op_threads, inter_op_threads)
  svt = dict(federated_setup.SVT_DEFAULTS if svt is None else svt)
  config = fed_avg.ClientConfig(
    model_config={'init_filters': init_filters},
    crop_size=(crop_size,) * 3,
    crops_per_case=crops_per_case,
  )
  aggregator = federated_setup.model_aggregator(privacy_mechanism, svt)
  results: dict[str, Any] = {}
  with tempfile.TemporaryDirectory(prefix='tff_brats-sites-') as work:
    client_data = federated_setup.prepare_clients(
      data_dir=data_dir,
      work_dir=work,
      num_clients=clients,
      cases_per_client=cases_per_client,
      volume_size=volume_size,
      seed=seed,
    )
    prepared_root = os.path.dirname(os.path.dirname(client_data[0][1][0]))
    ids = [c for c, _ in client_data]
    machine.progress('building the learning process')
    process = fed_avg.build_fed_avg_process(config, aggregator)
    split = None
    tf.keras.utils.set_random_seed(seed)
    model = config.build_model()
    weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables],
      non_trainable=[v.numpy() for v in model.non_trainable_variables],
    )
    with local.LocalRuntime(
      log_dir=os.path.join(work, 'logs'),
      max_concurrent_computation_calls=worker_max_concurrent_calls,
    ):
      state = process.set_model_weights(process.initialize(), weights)

      def local_round(round_num):
        process.next(
          state, federated_setup.client_inputs(client_data, seed, round_num)
        )

      results['local'] = _timed_rounds('local', local_round, rounds, warmup)
      study = os.path.join(work, 'study')
      names = [f'site{k}' for k in range(max(site_counts))]
      certificates.write_study_certificates(
        study, {name: ['localhost'] for name in names}
      )
      for n in site_counts:
        served = {names[k]: ids[k::n] for k in range(n)}
        with _sites(
          prepared_root, served, study, work, worker_max_concurrent_calls
        ) as sites:
          if split is None:
            split = sites_lib.SitesLearningProcess(process, sites)
          split.sites = sites

          def site_round(round_num, sites=sites, split=split):
            inputs = [
              dict(
                item, shard_paths=np.array(sites.shard_paths(c), dtype=object)
              )
              for c, item in zip(
                ids,
                federated_setup.client_inputs(client_data, seed, round_num),
                strict=True,
              )
            ]
            split.next(state, inputs, ids)

          results[f'{n} sites'] = _timed_rounds(
            f'{n} sites', site_round, rounds, warmup
          )
  return {
    'benchmark': 'site_rounds',
    'config': {
      'tensorflow': tf.__version__,
      'tensorflow_federated': tff.__version__,
      'cpu_count': os.cpu_count(),
      'cpu': machine.cpu_model(),
      'clients': clients,
      'cases_per_client': None if data_dir else cases_per_client,
      'volume_size': None if data_dir else volume_size,
      'crop_size': crop_size,
      'init_filters': init_filters,
      'privacy_mechanism': privacy_mechanism,
      'sites': 'workers on this machine behind mutual TLS on 127.0.0.1',
      'warmup_rounds': warmup,
      'timed_rounds': rounds,
    },
    **results,
  }


@contextlib.contextmanager
def _sites(prepared_root, served, study, work, max_calls):
  """Starts a TLS-fronted site worker per entry; yields the open `Sites`."""
  workers, terminators = [], []
  try:
    addresses = {}
    for name, institutions in served.items():
      serving = os.path.join(work, f'{name}-{len(served)}')
      sites_lib.write_serving_folder(prepared_root, institutions, serving)
      worker = worker_lib.WorkerProcess(
        portpicker.pick_unused_port(),
        os.path.join(work, 'logs', f'{name}-{len(served)}.log'),
        max_concurrent_computation_calls=max_calls,
        cwd=serving,
      )
      worker.start()
      workers.append(worker)
      terminator = tls.TlsTerminator(
        worker.address,
        certificate_file=os.path.join(study, f'{name}.pem'),
        private_key_file=os.path.join(study, f'{name}.key'),
        client_ca_file=os.path.join(study, 'ca.pem'),
      )
      terminator.start()
      terminators.append(terminator)
      addresses[name] = f'localhost:{terminator.port}'
    tls_options = sites_lib.TlsOptions(
      os.path.join(study, 'ca.pem'),
      os.path.join(study, 'coordinator.pem'),
      os.path.join(study, 'coordinator.key'),
    )
    with sites_lib.Sites(addresses, tls=tls_options) as sites:
      yield sites
  finally:
    for terminator in terminators:
      terminator.close()
    for worker in workers:
      worker.stop()


def _timed_rounds(name, run_round, rounds, warmup) -> dict[str, Any]:
  seconds = []
  for round_num in range(warmup + rounds):
    started = time.perf_counter()
    run_round(round_num)
    elapsed = time.perf_counter() - started
    timed = round_num >= warmup
    if timed:
      seconds.append(elapsed)
    machine.progress(
      f'{name} round {round_num}{"" if timed else " (warmup)"}: {elapsed:.2f} s'
    )
  median = float(np.median(seconds))
  return {
    'round_seconds': [round(s, 3) for s in seconds],
    'median_seconds': round(median, 3),
    'rounds_per_hour': round(3600.0 / median, 1),
  }


if __name__ == '__main__':
  app.run(main)
