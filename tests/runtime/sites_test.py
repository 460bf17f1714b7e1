"""Tests of tff_brats.runtime.sites: clients trained on the sites with their data.

Everything runs on this machine, on loopback or Unix sockets. Three site
workers each have their own copy of the data, holding only the shards of
the institution they serve, and run in their own serving folder. A round
split over them must equal the same round on one local worker. Then the
real site command (`experiments/run_site.py`) behind mutual TLS: a round
over two sites, one site killed in the middle of the next round, and no
process left behind.
"""

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import portpicker
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import testing_utils
from tff_brats import mechanisms
from tff_brats.learning import fed_avg
from tff_brats.runtime import certificates
from tff_brats.runtime import local
from tff_brats.runtime import sites as sites_lib
from tff_brats.runtime import worker as worker_lib

pytestmark = pytest.mark.slow  # starts workers, traces a process

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
MODEL_CONFIG = dict(init_filters=8, blocks_down=(1, 1), blocks_up=(1,))
CONFIG = fed_avg.ClientConfig(
  model_config=MODEL_CONFIG,
  crop_size=(16, 16, 16),
  report_training_statistics=True,
)
SHAPES = {
  'a': [(16, 16, 16), (20, 16, 16)],
  'b': [(16, 18, 16)],
  'c': [(18, 16, 16)],
}
SERVES = {'s1': ['a'], 's2': ['b'], 's3': ['c']}
SEED = 5


@pytest.fixture(scope='module')
def combined(tmp_path_factory):
  """Every institution's data in one folder (the local reference)."""
  root = str(tmp_path_factory.mktemp('combined'))
  return testing_utils.write_prepared_folder(root, SHAPES)


def _site_folder(folder, institutions):
  """A site's own data root, with only its institutions (consecutive in
  SHAPES), their cases identical to the combined folder's."""
  order = list(SHAPES)
  first = order.index(institutions[0])
  assert institutions == order[first : first + len(institutions)]
  offset = sum(len(SHAPES[c]) for c in order[:first])
  testing_utils.write_prepared_folder(
    folder, {c: SHAPES[c] for c in institutions}, seed=offset
  )
  return folder


@pytest.fixture(scope='module')
def site_workers(tmp_path_factory):
  """Name -> a started worker in its serving folder (Unix socket)."""
  base = tmp_path_factory.mktemp('sites')
  workers = {}
  try:
    for name, institutions in SERVES.items():
      data = _site_folder(str(base / f'{name}_data'), institutions)
      serving = str(base / f'{name}_serving')
      sites_lib.write_serving_folder(data, institutions, serving)
      worker = worker_lib.WorkerProcess(
        portpicker.pick_unused_port(), str(base / f'{name}.log'), cwd=serving
      )
      worker.start()
      workers[name] = worker
    for worker in workers.values():
      _wait_ready(worker)
    yield workers
  finally:
    for worker in workers.values():
      worker.stop()


def _wait_ready(worker):
  local.wait_for_worker(worker, 60)


@pytest.fixture(scope='module')
def process():
  return fed_avg.build_fed_avg_process(
    CONFIG, mechanisms.NoPrivacy().aggregation_factory()
  )


def _inputs(paths_of, clients, round_num=1):
  return [
    collections.OrderedDict(
      shard_paths=np.array(paths_of(c), dtype=object),
      data_key=fed_avg.client_data_key(SEED, round_num, 'abc'.index(c)),
    )
    for c in clients
  ]


def _initial(process):
  tf.keras.utils.set_random_seed(SEED)
  model = CONFIG.build_model()
  return process.set_model_weights(
    process.initialize(),
    tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables],
      non_trainable=[v.numpy() for v in model.non_trainable_variables],
    ),
  )


def _max_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(a, b, strict=True)
  )


def test_three_sites_give_the_round_of_one_local_worker(
  process, site_workers, combined, tff_runtime
):
  state = _initial(process)
  clients = ['a', 'b', 'c']
  local_output = process.next(state, _inputs(combined.shard_paths, clients))
  addresses = {name: w.address for name, w in site_workers.items()}
  with sites_lib.Sites(addresses, tls=None) as sites:
    assert sites.site_of == {'a': 's1', 'b': 's2', 'c': 's3'}
    # Relative to the site's serving folder: they resolve only there.
    assert sites.shard_paths('b') == ['data/shards/b-00000-of-00001.tfrecord']
    split = sites_lib.SitesLearningProcess(process, sites)
    output = split.next(state, _inputs(sites.shard_paths, clients), clients)
  # Only the order of the sums differs (measured 5e-10).
  assert (
    _max_difference(
      output.state.global_model_weights.trainable,
      local_output.state.global_model_weights.trainable,
    )
    < 1e-6
  )
  assert (
    _max_difference(
      output.state.global_model_weights.trainable,
      state.global_model_weights.trainable,
    )
    > 1e-4
  )  # the round did move the model
  train = output.metrics['client_work']['train']
  assert train['num_clients'] == 3 and train['steps'] == 4.0
  np.testing.assert_array_equal(
    train['dice_target'],
    local_output.metrics['client_work']['train']['dice_target'],
  )


def test_a_client_routed_to_the_wrong_site_fails_loudly(
  process, site_workers, tff_runtime
):
  addresses = {name: w.address for name, w in site_workers.items()}
  with sites_lib.Sites(addresses, tls=None, site_timeout=120) as sites:
    paths = sites.shard_paths('a')
    split = sites_lib.SitesLearningProcess(process, sites)
    state = _initial(process)
    # The coordinator's routing table against what s2 serves.
    sites.site_of['a'] = 's2'
    with pytest.raises(
      sites_lib.SiteError, match=r"'a' is routed to site 's2' .* serves \['b'\]"
    ):
      split.next(state, _inputs(lambda c: paths, ['a']), ['a'])
    # A site that claims data it does not hold fails there, by name.
    sites.connections['s2'].institutions['a'] = paths
    with pytest.raises(
      sites_lib.SiteError, match=r"site 's2' .* failed: .*a-00000-of-00001"
    ):
      split.next(state, _inputs(lambda c: paths, ['a']), ['a'])


def test_an_institution_on_two_sites_is_refused(site_workers):
  address = site_workers['s1'].address
  with pytest.raises(sites_lib.SiteError, match="'a' is served by two sites"):
    sites_lib.Sites({'s1': address, 'again': address}, tls=None).open()


def test_an_unreachable_site_is_named(site_workers):
  port = portpicker.pick_unused_port()
  started = time.monotonic()
  with pytest.raises(
    sites_lib.SiteError,
    match=rf"site 'gone' at localhost:{port} did not answer",
  ):
    sites_lib.Sites(
      {'gone': f'localhost:{port}'}, tls=None, connect_timeout=2
    ).open()
  assert time.monotonic() - started < 10


def test_plaintext_to_another_host_is_refused_before_connecting():
  with pytest.raises(ValueError, match="site 'h' at '10.9.8.7:8443'"):
    sites_lib.Sites({'h': '10.9.8.7:8443'}, tls=None)


# ------------------------------------- the site command, behind TLS ----


def _start_site(name, data, study, log_dir):
  port = portpicker.pick_unused_port()
  log = open(os.path.join(log_dir, f'{name}.out'), 'w')  # noqa: SIM115
  child = subprocess.Popen(
    [
      sys.executable,
      '-m',
      'experiments.run_site',
      f'--data_dir={data}',
      f'--listen=127.0.0.1:{port}',
      f'--certificate={os.path.join(study, name + ".pem")}',
      f'--private_key={os.path.join(study, name + ".key")}',
      f'--client_ca={os.path.join(study, "ca.pem")}',
      f'--worker_log_dir={log_dir}',
    ],
    cwd=_REPO,
    stdout=log,
    stderr=subprocess.STDOUT,
    stdin=subprocess.DEVNULL,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
  )
  return child, log, port


def _wait_for_line(path, pattern, timeout):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with open(path) as f:
      found = re.search(pattern, f.read())
    if found:
      return found
    time.sleep(0.2)
  with open(path) as f:
    raise AssertionError(
      f'no {pattern!r} in {path} after {timeout} s:\n{f.read()}'
    )


def test_site_command_over_mutual_tls_and_a_site_killed_mid_round(
  process, combined, tmp_path, tff_runtime
):
  study = str(tmp_path / 'study')
  certificates.write_study_certificates(
    study, {'s1': ['localhost'], 's2': ['localhost']}
  )
  data = {
    's1': _site_folder(str(tmp_path / 's1_data'), ['a']),
    's2': _site_folder(str(tmp_path / 's2_data'), ['b', 'c']),
  }
  logs = str(tmp_path / 'logs')
  os.makedirs(logs)
  started = {name: _start_site(name, data[name], study, logs) for name in data}
  worker_pids = {}
  try:
    for name, (_, log, _) in started.items():
      found = _wait_for_line(log.name, r'Site ready: .* worker pid (\d+)', 120)
      worker_pids[name] = int(found.group(1))
    tls = sites_lib.TlsOptions(
      os.path.join(study, 'ca.pem'),
      os.path.join(study, 'coordinator.pem'),
      os.path.join(study, 'coordinator.key'),
    )
    addresses = {
      name: f'localhost:{port}' for name, (_, _, port) in started.items()
    }
    with sites_lib.Sites(addresses, tls=tls, site_timeout=20) as sites:
      assert sites.site_of == {'a': 's1', 'b': 's2', 'c': 's2'}
      split = sites_lib.SitesLearningProcess(process, sites)
      clients = ['a', 'b', 'c']
      state = _initial(process)
      output = split.next(state, _inputs(sites.shard_paths, clients), clients)
      assert output.metrics['client_work']['train']['steps'] == 4.0

      # Round 2, with s2 killed (SIGKILL) while it trains.
      errors = []

      def round_two():
        try:
          split.next(
            output.state, _inputs(sites.shard_paths, clients, 2), clients
          )
        except sites_lib.SiteError as e:
          errors.append(e)

      # Warm now: a short deadline keeps the test short.
      sites.site_timeout = 5.0
      thread = threading.Thread(target=round_two)
      thread.start()
      started['s2'][0].kill()  # before s2 can have finished its part
      thread.join(120)
      assert not thread.is_alive()
    (error,) = errors
    assert f"site 's2' at localhost:{started['s2'][2]}" in str(error)
    # The killed site's worker died with it (parent-death signal).
    assert testing_utils.wait_process_gone(worker_pids['s2'])
    # The other site stops cleanly on SIGTERM, with its worker.
    started['s1'][0].send_signal(signal.SIGTERM)
    assert started['s1'][0].wait(60) == 0
    assert testing_utils.wait_process_gone(worker_pids['s1'])
  finally:
    for child, log, _ in started.values():
      if child.poll() is None:
        child.kill()
        child.wait(30)
      log.close()
