"""End-to-end tests of the federated trainer on a tiny prepared folder.

Every run builds the TFF learning process (tens of seconds of tracing) and
trains a small SegResNet (init_filters 8, 16³ crops) for a few rounds.
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from tff_brats.models import model_io
from tff_brats.privacy import accounting
from tff_brats.training import federated

pytestmark = pytest.mark.slow

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
_CLIENTS = ('a', 'b', 'c')
_SVT = dict(
  privacy_mechanism='sparse_vector',
  shared_fraction=0.1,
  clip_bound=1e-3,
  selection_epsilon=1.0,
  release_epsilon=1.0,
  threshold=5e-4,
)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  testing_utils.write_prepared_folder(
    str(root),
    {'a': [(16, 16, 16)] * 2, 'b': [(16, 18, 16)], 'c': [(18, 16, 16)]},
    validation_shapes=[(16, 16, 16), (18, 16, 16)],
  )
  return str(root)


def _config(data_dir, **overrides):
  kwargs = dict(
    data_dir=data_dir,
    total_rounds=2,
    crop_size=(16, 16, 16),
    init_filters=8,
    tumour_crop_probability=1.0,
    client_learning_rate=1e-3,
    rounds_per_eval=1,
    num_overlay_cases=1,
    seed=3,
    **_SVT,
  )
  kwargs.update(overrides)
  return federated.FederatedConfig(**kwargs)


def _rows(run_dir):
  with open(os.path.join(run_dir, 'metrics.csv')) as f:
    return list(csv.DictReader(f))


def _ledger(run_dir):
  with open(os.path.join(run_dir, federated.LEDGER_JSON)) as f:
    return accounting.PrivacyLedger.from_json(f.read())


def _journal(run_dir):
  with open(os.path.join(run_dir, federated.JOURNAL_NAME)) as f:
    return [json.loads(line) for line in f if line.strip()]


def _assert_no_worker_children():
  assert testing_utils.child_pids('worker_binary') == []


# ------------------------------------------------------------ outputs ----


@pytest.fixture(scope='module')
def svt_run(data_dir, tmp_path_factory):
  """One 2-round SVT run shared by the tests that only read or copy it."""
  run_dir = str(tmp_path_factory.mktemp('svt') / 'run')
  summary = federated.train_federated(
    _config(data_dir, eval_per_institution=True), run_dir, progress=False
  )
  _assert_no_worker_children()
  return run_dir, summary


def test_sparse_vector_run_writes_every_output(svt_run):
  run_dir, summary = svt_run
  assert sorted(os.listdir(run_dir)) == sorted(
    [
      'best_model',
      'checkpoints',
      'exported_model',
      'final_model',
      'hparams.json',
      'learning_curves.png',
      'logs',
      'metrics.csv',
      'privacy_journal.jsonl',
      'privacy_ledger.json',
      'privacy_ledger.txt',
      'summary.json',
      'tensorboard',
    ]
  )
  rows = _rows(run_dir)
  assert [r['round'] for r in rows] == ['1', '2']
  assert [r['release'] for r in rows] == ['0', '1']
  num_values = model_io.load_model(
    os.path.join(run_dir, 'final_model')
  ).count_params()
  for row in rows:
    assert row['clients'] == '3'
    assert row['client_ids'] == 'a b c'
    # 4 training cases, one crop each, batch 1.
    assert row['steps'] == '4'
    assert 0.0 < float(row['train_loss']) < 2.0
    assert 0.0 <= float(row['val_dice_mean']) <= 1.0
    assert float(row['val_hd95_WT']) >= 0.0
    assert 0 < float(row['released_max']) <= np.ceil(0.1 * num_values)
    assert float(row['epsilon_per_client']) == 2.0
    for client in _CLIENTS:
      assert 0.0 <= float(row[f'inst_{client}_dice_mean']) <= 1.0
  # ε at δ of the worst institution after k rounds of pure ε = 2. One
  # round: log(e^2 − δ(1 + e^2)) = 2 − 1.14e-5 (Kairouz et al. 2015, k = 1);
  # two: between the largest single round and the sum.
  one = np.log(np.exp(2.0) - 1e-5 * (1 + np.exp(2.0)))
  assert float(rows[0]['epsilon_worst']) == pytest.approx(one, abs=1e-5)
  assert 2.0 < float(rows[1]['epsilon_worst']) <= 4.0

  ledger = _ledger(run_dir)
  for client in _CLIENTS:
    assert [r for r, _ in ledger.history(client)] == [0, 1]
  assert summary['privacy']['epsilon_summed'] == {c: 4.0 for c in _CLIENTS}
  assert summary['rounds_completed'] == 2
  assert summary['releases'] == 2
  assert summary['stopped'] is None
  best = max(float(r['val_dice_mean']) for r in rows)
  assert summary['best_val_dice_mean'] == pytest.approx(best, abs=1e-6)
  with open(os.path.join(run_dir, federated.LEDGER_TABLE)) as f:
    table = f.read()
  assert all(
    re.search(rf'^{c}\s+2\s+sparse_vector', table, re.M) for c in _CLIENTS
  )
  with open(os.path.join(run_dir, 'learning_curves.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # The exported SavedModel serves probabilities.
  exported = tf.saved_model.load(summary['exported_model'])
  out = exported.signatures['serving_default'](tf.zeros((1, 16, 16, 16, 4)))
  (probabilities,) = out.values()
  assert probabilities.shape == (1, 16, 16, 16, 3)
  assert tf.io.gfile.glob(os.path.join(run_dir, 'tensorboard', 'events*'))


@pytest.mark.parametrize(
  'mode, overrides, epsilon',
  [
    ('none', {}, None),
    ('selective_sharing', {'shared_fraction': 0.5}, None),
    ('gaussian', {'noise_multiplier': 1.0, 'clip_bound': 0.1}, 'finite'),
  ],
)
def test_other_privacy_modes(data_dir, tmp_path, mode, overrides, epsilon):
  run_dir = str(tmp_path / mode)
  settings = {**_SVT, 'privacy_mechanism': mode, **overrides}
  if mode != 'sparse_vector':
    settings['selection_epsilon'] = settings['release_epsilon'] = None
  config = _config(data_dir, total_rounds=1, clients_per_round=2, **settings)
  summary = federated.train_federated(config, run_dir, progress=False)
  _assert_no_worker_children()
  (row,) = _rows(run_dir)
  assert row['clients'] == '2'
  picked = row['client_ids'].split()
  assert picked == federated.sample_clients(list(_CLIENTS), 2, 3, 1)
  assert 0.0 <= float(row['val_dice_mean']) <= 1.0
  tight = summary['privacy']['epsilon_tight']
  for client in _CLIENTS:
    if client not in picked:
      assert tight[client] == 0.0
    elif epsilon is None:  # no DP claim: ε = ∞, reported as null
      assert tight[client] is None
    else:
      # One unsampled Gaussian round with z = 1 at δ = 1e-5: about 4.4
      # (dp_accounting's PLD; the analytic Gaussian mechanism gives the
      # same to two decimals).
      assert 3.5 < tight[client] < 5.0


# ------------------------------------------------------------- resume ----


def test_resume_continues_exactly(data_dir, tmp_path):
  common = dict(noise_seed=11, rounds_per_eval=2)
  straight = str(tmp_path / 'straight')
  federated.train_federated(
    _config(data_dir, total_rounds=4, **common), straight, progress=False
  )
  split = str(tmp_path / 'split')
  federated.train_federated(
    _config(data_dir, total_rounds=2, **common), split, progress=False
  )
  federated.train_federated(
    _config(data_dir, total_rounds=4, **common),
    split,
    resume=True,
    progress=False,
  )
  _assert_no_worker_children()
  a = model_io.load_model(os.path.join(straight, 'final_model'))
  b = model_io.load_model(os.path.join(split, 'final_model'))
  for x, y in zip(a.trainable_variables, b.trainable_variables, strict=True):
    np.testing.assert_array_equal(x.numpy(), y.numpy())
  assert _ledger(straight).to_json() == _ledger(split).to_json()

  def without_seconds(rows):
    return [{k: v for k, v in r.items() if k != 'seconds'} for r in rows]

  assert without_seconds(_rows(straight)) == without_seconds(_rows(split))


def test_resume_refuses_changed_hyper_parameters(data_dir, svt_run, tmp_path):
  run_dir = str(tmp_path / 'run')
  shutil.copytree(svt_run[0], run_dir)
  before = _rows(run_dir)
  with pytest.raises(ValueError, match=r'client_learning_rate: saved 0.001'):
    federated.train_federated(
      _config(
        data_dir,
        total_rounds=3,
        eval_per_institution=True,
        client_learning_rate=0.01,
      ),
      run_dir,
      resume=True,
      progress=False,
    )
  with pytest.raises(ValueError, match=r'run_dir must be new or empty'):
    federated.train_federated(
      _config(data_dir, eval_per_institution=True), run_dir, progress=False
    )
  _assert_no_worker_children()
  # Nothing of the run was touched.
  assert _rows(run_dir) == before
  assert sorted(os.listdir(run_dir)) == sorted(os.listdir(svt_run[0]))


def _binary_flags(data_dir, root, total_rounds):
  # Ten local epochs make a round last seconds (40 steps), not a fraction
  # of one, so a signal sent once a round has started lands inside it.
  return [
    f'--data_dir={data_dir}',
    f'--root_output_dir={root}',
    '--experiment_name=run',
    f'--total_rounds={total_rounds}',
    '--crop_size=16,16,16',
    '--init_filters=8',
    '--client_epochs_per_round=10',
    '--tumour_crop_probability=1',
    '--rounds_per_eval=1',
    '--num_overlay_cases=0',
    '--privacy_mechanism=sparse_vector',
    '--shared_fraction=0.1',
    '--clip_bound=1e-3',
    '--selection_epsilon=1',
    '--release_epsilon=1',
    '--seed=3',
    '--noprogress',
  ]


def _start_binary(flags, log_path):
  log = open(log_path, 'w')  # noqa: SIM115 (closed by the caller's wait)
  return subprocess.Popen(
    [sys.executable, '-m', 'experiments.train_federated', *flags],
    cwd=_REPO,
    stdout=log,
    stderr=subprocess.STDOUT,
    stdin=subprocess.DEVNULL,
  ), log


def _worker_pids(log_path):
  with open(log_path) as f:
    return [
      int(p) for p in re.findall(r'Started TFF worker pid (\d+)', f.read())
    ]


def _wait_for(predicate, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    time.sleep(0.2)
  raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def test_sigkill_mid_round_then_resume_keeps_a_consistent_ledger(
  data_dir, tmp_path
):
  root = str(tmp_path / 'runs')
  run_dir = os.path.join(root, 'run')
  journal = os.path.join(run_dir, federated.JOURNAL_NAME)
  checkpoint = os.path.join(run_dir, 'checkpoints', 'program_state_1')
  flags = _binary_flags(data_dir, root, total_rounds=3)
  first_log = str(tmp_path / 'first.log')
  child, log = _start_binary(flags, first_log)
  try:
    # Round 2 has started (its release is in the journal) and round 1 is
    # checkpointed: kill -9 in the middle of round 2.
    _wait_for(
      lambda: (
        os.path.isdir(checkpoint)
        and os.path.exists(journal)
        and len(_journal(run_dir)) == 2
      ),
      timeout=600,
      what='round 2 to start',
    )
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
  finally:
    if child.poll() is None:
      child.kill()
    log.close()
  assert child.returncode == -signal.SIGKILL
  for pid in _worker_pids(first_log):
    assert testing_utils.wait_process_gone(pid), f'worker {pid} survived'
  assert [r['round'] for r in _rows(run_dir)] == ['1']

  second_log = str(tmp_path / 'second.log')
  child, log = _start_binary([*flags, '--resume'], second_log)
  try:
    child.wait(timeout=900)
  finally:
    if child.poll() is None:
      child.kill()
    log.close()
  with open(second_log) as f:
    output = f.read()
  assert child.returncode == 0, output[-3000:]
  assert 'Counted 1 release(s)' in output
  for pid in _worker_pids(second_log):
    assert testing_utils.wait_process_gone(pid), f'worker {pid} survived'

  rows = _rows(run_dir)
  assert [r['round'] for r in rows] == ['1', '2', '3']
  # Release 1 is the interrupted round 2: it counts, and the rerun is
  # release 2. Every journal entry is in the ledger exactly once.
  assert [r['release'] for r in rows] == ['0', '2', '3']
  entries = _journal(run_dir)
  assert [(e['release'], e['round']) for e in entries] == [
    (0, 1),
    (1, 2),
    (2, 2),
    (3, 3),
  ]
  ledger = _ledger(run_dir)
  for client in _CLIENTS:
    assert [r for r, _ in ledger.history(client)] == [0, 1, 2, 3]
  with open(os.path.join(run_dir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['rounds_completed'] == 3
  assert summary['releases'] == 4
  assert summary['privacy']['epsilon_summed'] == {c: 8.0 for c in _CLIENTS}


def test_ctrl_c_mid_round_ends_the_worker(data_dir, tmp_path):
  root = str(tmp_path / 'runs')
  run_dir = os.path.join(root, 'run')
  log_path = str(tmp_path / 'run.log')
  child, log = _start_binary(_binary_flags(data_dir, root, 2), log_path)
  try:
    _wait_for(
      lambda: os.path.exists(os.path.join(run_dir, federated.JOURNAL_NAME)),
      timeout=600,
      what='round 1 to start',
    )
    child.send_signal(signal.SIGINT)
    child.wait(timeout=120)
  finally:
    if child.poll() is None:
      child.kill()
    log.close()
  assert child.returncode != 0
  (pid,) = _worker_pids(log_path)
  assert testing_utils.wait_process_gone(pid), f'worker {pid} survived'


def test_failed_run_leaves_no_worker(data_dir, tmp_path, monkeypatch):
  def broken_evaluate(self, round_num, row):
    raise RuntimeError('evaluation failed on purpose')

  monkeypatch.setattr(federated._Trainer, '_evaluate', broken_evaluate)
  with pytest.raises(RuntimeError, match='on purpose'):
    federated.train_federated(
      _config(data_dir, total_rounds=1), str(tmp_path / 'run'), progress=False
    )
  _assert_no_worker_children()


# ------------------------------------------------------------ budget ----


def test_target_epsilon_stops_before_the_round_that_would_pass_it(
  data_dir, tmp_path
):
  run_dir = str(tmp_path / 'run')
  # ε = 2 per round: after 2 rounds every institution has spent 4 (tight:
  # just below 4); a third round would take it to about 6 > 5.
  summary = federated.train_federated(
    _config(data_dir, total_rounds=5, target_epsilon=5.0, rounds_per_eval=5),
    run_dir,
    progress=False,
  )
  _assert_no_worker_children()
  assert summary['rounds_completed'] == 2
  assert summary['stopped'].startswith('Stopped before round 3:')
  assert 'target_epsilon=5.0' in summary['stopped']
  assert [r['round'] for r in _rows(run_dir)] == ['1', '2']
  # The last completed round was evaluated although it is not a multiple
  # of rounds_per_eval, so the best model exists.
  assert summary['best_round'] == 2
  for value in summary['privacy']['epsilon_tight'].values():
    assert 3.9 < value <= 4.0


# --------------------------------------------------------- validation ----


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'total_rounds': 0}, 'total_rounds must be a positive integer. Found 0.'),
    ({'privacy_mechanism': 'laplace'}, 'privacy_mechanism must be one of'),
    ({'selection_epsilon': None}, 'selection_epsilon must be given'),
    ({'delta': 1.5}, 'delta'),
    ({'target_epsilon': -1.0}, 'target_epsilon must be a positive number'),
    ({'server_optimizer': 'rmsprop'}, 'server_optimizer must be one of'),
    ({'crop_size': (16, 16, 12)}, 'crop_size'),
  ],
)
def test_config_validation(data_dir, overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    _config(data_dir, **overrides)


def test_too_many_clients_per_round(data_dir, tmp_path):
  with pytest.raises(
    ValueError, match=r'clients_per_round must be at most the 3'
  ):
    federated.train_federated(
      _config(data_dir, clients_per_round=4),
      str(tmp_path / 'r'),
      progress=False,
    )


def test_sampling_is_a_function_of_seed_and_round():
  ids = [f'i{k}' for k in range(13)]
  a = [federated.sample_clients(ids, 3, 7, r) for r in range(1, 50)]
  assert a == [federated.sample_clients(ids, 3, 7, r) for r in range(1, 50)]
  assert all(len(set(s)) == 3 and s == sorted(s, key=ids.index) for s in a)
  # 49 rounds of 3 of 13: the chance that one seed repeats the other's
  # whole sequence is (1/286)^49.
  assert a != [federated.sample_clients(ids, 3, 8, r) for r in range(1, 50)]
  assert federated.sample_clients(ids, None, 7, 1) == ids
