"""End-to-end tests of the federated trainer on the real TFF runtime.

What only the real process and worker can show: one full run per privacy
mode, and a run that is interrupted (Ctrl-C of the binary, then SIGKILL of
its TFF worker, both mid-round) and resumed to the same result as an
uninterrupted one. The
uninterrupted run and the final resume run in this process and share its
traced client computations (`fed_avg` traces them once per config); only
the binaries that are interrupted pay for a cold start. The loop's logic
(budget stop, journal, resume, sampling, best model) is tested on a fast
stand-in in federated_loop_test.py. Every run builds the TFF learning
process (tens of seconds of tracing) and trains SegResNet-8 on 16³ crops.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

from absl import flags
from absl.testing import flagsaver
import dp_accounting
import numpy as np
import pytest

from experiments import train_federated
from tests import testing_utils
from tests.training import fake_process
from tests.training import run_files
from tff_brats import mechanisms
from tff_brats.evaluation import evaluate
from tff_brats.models import model_io
from tff_brats.training import federated

pytestmark = pytest.mark.slow

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
_CLIENTS = ('a', 'b', 'c')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  testing_utils.write_three_institutions(str(root))
  return str(root)


def _binary_flags(data_dir, root):
  # Ten local epochs make a round last seconds (40 steps), not a fraction
  # of one, so a signal sent once a round has started lands inside it.
  # A fixed noise seed makes the SVT's noise a function of (seed, round,
  # update), so an interrupted run can be compared with an uninterrupted one
  # (and the ledger records no guarantee).
  return [
    f'--data_dir={data_dir}',
    f'--root_output_dir={root}',
    '--experiment_name=run',
    '--total_rounds=3',
    '--crop_size=16,16,16',
    '--init_filters=8',
    '--blocks_down=1,1',
    '--blocks_up=1',
    '--client_epochs_per_round=10',
    '--tumour_crop_probability=1',
    '--rounds_per_eval=1',
    '--num_overlay_cases=1',
    '--eval_per_institution',
    '--privacy_mechanism=sparse_vector',
    '--shared_fraction=0.1',
    '--clip_bound=1e-3',
    '--selection_epsilon=1',
    '--release_epsilon=1',
    '--threshold=5e-4',
    '--noise_seed=11',
    '--report_training_statistics',
    '--seed=3',
    '--noprogress',
  ]


def _config_of(binary_flags):
  """The config `experiments/train_federated.py` builds from these flags."""
  with flagsaver.flagsaver():
    flags.FLAGS(['train_federated', *binary_flags])
    return train_federated.config_from_flags()


def _assert_no_worker_children():
  assert testing_utils.stray_worker_pids() == []


# -------------------------------------------------- one run per mode ----


@pytest.fixture(scope='module')
def svt_run(data_dir, tmp_path_factory):
  """The binary's SVT configuration, uninterrupted, in this process."""
  root = str(tmp_path_factory.mktemp('svt'))
  config = _config_of(_binary_flags(data_dir, root))
  run_dir = os.path.join(root, 'run')
  summary = federated.train_federated(config, run_dir, progress=False)
  _assert_no_worker_children()
  return run_dir, summary


def test_sparse_vector_run(svt_run):
  run_dir, summary = svt_run
  assert 'logs' in os.listdir(run_dir)  # the worker's log
  (log,) = os.listdir(os.path.join(run_dir, 'logs'))
  assert log.startswith('tff_worker-')
  rows = run_files.rows(run_dir)
  assert [r['round'] for r in rows] == ['1', '2', '3']
  assert [r['release'] for r in rows] == ['0', '1', '2']
  num_values = model_io.load_model(
    os.path.join(run_dir, 'final_model')
  ).count_params()
  for row in rows:
    assert row['clients'] == '3'
    # 4 training cases, one crop each, batch 1, 10 local epochs.
    assert row['steps'] == '40'
    assert 0.0 < float(row['train_loss']) < 2.0
    assert 0.0 <= float(row['val_dice_mean']) <= 1.0
    assert float(row['val_hd95_WT']) >= 0.0
    assert 0 < float(row['released_max']) <= np.ceil(0.1 * num_values)
    # A fixed noise seed makes the noise replayable: no guarantee.
    assert row['epsilon_per_client'] == 'inf'
    assert row['epsilon_worst'] == 'inf'
    for client in _CLIENTS:
      assert 0.0 <= float(row[f'inst_{client}_dice_mean']) <= 1.0
  for client in _CLIENTS:
    assert [r for r, _ in run_files.ledger(run_dir).history(client)] == [
      0,
      1,
      2,
    ]
  assert summary['privacy']['epsilon_summed'] == {c: None for c in _CLIENTS}
  assert summary['privacy']['per_round'] == 'no guarantee (fixed noise seed)'
  assert any('fixed noise seed' in c for c in summary['privacy']['caveats'])
  with open(os.path.join(run_dir, federated.LEDGER_TABLE)) as f:
    table = f.read()
  for client in _CLIENTS:
    assert re.search(
      rf'^{client}\s+3\s+sparse_vector \(no guarantee \(fixed noise seed\)\)'
      r'\s+inf\s+inf$',
      table,
      re.M,
    ), table
  assert summary['rounds_completed'] == 3
  assert summary['exported_model'] == os.path.join(run_dir, 'exported_model')


# Selective sharing runs on the in-process client runtime (clients trained
# in this process, the mechanism in TFF at CLIENTS): one end-to-end run of
# that runtime at no extra cost; the others on the worker runtime.
@pytest.mark.parametrize(
  'mechanism, epsilon, runtime',
  [
    (mechanisms.NoPrivacy(), None, 'worker'),
    (
      mechanisms.SelectiveSharing(shared_fraction=0.5, clip_bound=1e-3),
      None,
      'in_process',
    ),
    (
      mechanisms.Gaussian(noise_multiplier=1.0, l2_norm_clip=0.1),
      'finite',
      'worker',
    ),
    (
      mechanisms.DpSgd(
        noise_multiplier=1.0, sampling_probability=0.5, local_steps=2
      ),
      'patient',
      'worker',
    ),
  ],
  ids=lambda value: getattr(value, 'name', value),
)
def test_other_privacy_modes(
  data_dir, tmp_path, monkeypatch, mechanism, epsilon, runtime
):
  # The SavedModel export (seconds of tracing) does not depend on the mode:
  # test_sparse_vector_run covers it.
  monkeypatch.setattr(
    federated.export,
    'export_model_dir',
    lambda model_dir, output_dir, overwrite: output_dir,
  )
  run_dir = str(tmp_path / mechanism.name)
  config = federated.FederatedConfig(
    data_dir=data_dir,
    mechanism=mechanism,
    total_rounds=1,
    clients_per_round=2,
    crop_size=(16, 16, 16),
    init_filters=8,
    blocks_down=(1, 1),
    blocks_up=(1,),
    tumour_crop_probability=1.0,
    num_overlay_cases=0,
    seed=3,
  )
  summary = federated.train_federated(
    config, run_dir, progress=False, runtime=runtime
  )
  _assert_no_worker_children()
  (row,) = run_files.rows(run_dir)
  assert row['clients'] == '2'
  unit = 'patient' if epsilon == 'patient' else 'institution'
  assert summary['privacy']['unit'] == unit
  with open(os.path.join(run_dir, federated.LEDGER_TABLE)) as f:
    assert f.readline().startswith(f'Privacy spent per {unit}')
  if epsilon == 'patient':
    assert row['steps'] == '4'  # T = 2 per client, whatever the lots
  if runtime == 'in_process':
    # The runtime is not a hyper-parameter: --resume may switch it.
    with open(os.path.join(run_dir, 'hparams.json')) as f:
      assert 'runtime' not in f.read()
    # The mechanism ran at CLIENTS: each client released half its values.
    assert float(row['released_min']) > 0
  picked = row['client_ids'].split()
  assert picked == federated.sample_clients(list(_CLIENTS), 2, 3, 1)
  assert 0.0 <= float(row['val_dice_mean']) <= 1.0
  tight = summary['privacy']['epsilon_tight']
  for client in _CLIENTS:
    if client not in picked:
      assert tight[client] == 0.0
    elif epsilon is None:  # no DP claim: ε = ∞, reported as null
      assert tight[client] is None
    elif epsilon == 'patient':
      # Two Poisson-sampled (q = 1/2) Gaussian steps with z = 1, per
      # patient, straight from dp_accounting.
      event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
          0.5, dp_accounting.GaussianDpEvent(1.0)
        ),
        2,
      )
      want = dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(1e-5)
      assert tight[client] == pytest.approx(want, rel=1e-6)
    else:
      # One unsampled Gaussian round with z = 1 at δ = 1e-5: about 4.4
      # (dp_accounting's PLD; the analytic Gaussian mechanism gives the
      # same to two decimals).
      assert 3.5 < tight[client] < 5.0


def test_failed_run_leaves_no_worker(data_dir, tmp_path, monkeypatch):
  # A real worker, a stand-in process (no tracing), a failing evaluation.
  monkeypatch.setattr(
    federated,
    'build_learning_process',
    lambda config, model_aggregator, runtime: fake_process.FakeProcess(),
  )

  def broken_evaluate(*args, **kwargs):
    raise RuntimeError('evaluation failed on purpose')

  monkeypatch.setattr(evaluate, 'evaluate_prepared', broken_evaluate)
  config = federated.FederatedConfig(
    data_dir=data_dir,
    mechanism=mechanisms.NoPrivacy(),
    total_rounds=1,
    crop_size=(16, 16, 16),
    init_filters=8,
    blocks_down=(1, 1),
    blocks_up=(1,),
  )
  with pytest.raises(RuntimeError, match='on purpose'):
    federated.train_federated(config, str(tmp_path / 'run'), progress=False)
  _assert_no_worker_children()


# ------------------------------------------- interrupted, then resumed ----


def _start_binary(flag_list, log_path):
  log = open(log_path, 'w')  # noqa: SIM115 (closed by _finish)
  child = subprocess.Popen(
    # --verbosity=0: the INFO log names the worker's pid.
    [
      sys.executable,
      '-m',
      'experiments.train_federated',
      *flag_list,
      '--verbosity=0',
    ],
    cwd=_REPO,
    stdout=log,
    stderr=subprocess.STDOUT,
    stdin=subprocess.DEVNULL,
    # As in a terminal, whatever this process does with SIGINT (a test run
    # started as `cmd &` from a script ignores it, and so would the child).
    preexec_fn=_default_sigint,
  )
  return child, log


def _default_sigint():
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finish(child, log, timeout):
  try:
    child.wait(timeout=timeout)
  finally:
    if child.poll() is None:
      child.kill()
    log.close()
  with open(log.name) as f:
    return f.read()


def _worker_pids(output):
  return [int(p) for p in re.findall(r'Started TFF worker pid (\d+)', output)]


def _wait_for(predicate, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    time.sleep(0.2)
  raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def test_interrupted_runs_resume_to_the_uninterrupted_result(
  data_dir, svt_run, tmp_path, caplog
):
  root = str(tmp_path / 'runs')
  run_dir = os.path.join(root, 'run')
  journal = os.path.join(run_dir, federated.JOURNAL_NAME)
  flag_list = _binary_flags(data_dir, root)

  # 1. Ctrl-C in the middle of round 1 (its release is journalled).
  child, log = _start_binary(flag_list, str(tmp_path / 'first.log'))
  _wait_for(lambda: os.path.exists(journal), 600, 'round 1 to start')
  child.send_signal(signal.SIGINT)
  output = _finish(child, log, timeout=120)
  assert child.returncode != 0
  (pid,) = _worker_pids(output)
  assert testing_utils.wait_process_gone(pid), f'worker {pid} survived'

  # 2. Resumed; its TFF worker is killed (SIGKILL, as the kernel's OOM
  # killer would) in the middle of round 2, after round 1's checkpoint.
  # The trainer must stop within a bounded time (TFF alone would retry the
  # dead connection forever) with an error that names the worker and its
  # log. (A SIGKILLed trainer: tests/runtime/local_test.py shows its worker
  # ends, tests/training/crash_resume_test.py that the run resumes exactly.)
  checkpoint = os.path.join(run_dir, 'checkpoints', 'program_state_1')
  child, log = _start_binary([*flag_list, '--resume'], str(tmp_path / 'b.log'))
  _wait_for(
    lambda: os.path.isdir(checkpoint) and len(run_files.journal(run_dir)) == 3,
    600,
    'round 2 to start',
  )
  (worker_pid,) = testing_utils.stray_worker_pids()
  time.sleep(0.5)
  os.kill(worker_pid, signal.SIGKILL)
  killed = time.monotonic()
  output = _finish(child, log, timeout=120)
  assert time.monotonic() - killed < 60
  assert child.returncode == 1, output
  assert 'Counted 1 release(s)' in output  # round 1's interrupted release
  assert 'train_federated: error: The TFF worker (process' in output
  assert 'was killed by SIGKILL (signal 9)' in output
  assert f'Its log is {os.path.join(run_dir, "logs", "tff_worker-")}' in output
  assert 'continues from its last checkpoint with --resume' in output
  assert [r['round'] for r in run_files.rows(run_dir)] == ['1']

  # 3. Resumed to the end, in this process (whose client computations
  # svt_run traced already).
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    federated.train_federated(
      _config_of(flag_list), run_dir, resume=True, progress=False
    )
  _assert_no_worker_children()
  # Round 2's interrupted release (its worker killed), after round 1's
  # checkpoint.
  assert any('Counted 1 release(s)' in r.getMessage() for r in caplog.records)

  # Every release left the clients and is counted exactly once: releases 0
  # and 2 are the interrupted rounds 1 and 2.
  assert [(e['release'], e['round']) for e in run_files.journal(run_dir)] == [
    (0, 1),
    (1, 1),
    (2, 2),
    (3, 2),
    (4, 3),
  ]
  rows = run_files.rows(run_dir)
  assert [r['release'] for r in rows] == ['1', '3', '4']
  ledger = run_files.ledger(run_dir)
  for client in _CLIENTS:
    assert [r for r, _ in ledger.history(client)] == [0, 1, 2, 3, 4]
  with open(os.path.join(run_dir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['rounds_completed'] == 3
  assert summary['releases'] == 5
  assert summary['privacy']['epsilon_summed'] == {c: None for c in _CLIENTS}

  # The model and every number but the release counters and the times are
  # those of the uninterrupted run (with a fixed noise seed ε is inf in
  # both).
  straight = svt_run[0]
  for a, b in zip(
    run_files.weights(straight), run_files.weights(run_dir), strict=True
  ):
    np.testing.assert_array_equal(a, b)

  def comparable(row):
    ignored = ('release', 'seconds')
    return {k: v for k, v in row.items() if k not in ignored}

  assert [comparable(r) for r in rows] == [
    comparable(r) for r in run_files.rows(straight)
  ]
