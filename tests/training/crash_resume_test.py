"""SIGKILL at any moment of a federated run, then resume: the same result.

A child Python runs the federated loop (on the numpy stand-in process,
`fake_process`, with real checkpoints, evaluation, model saving and the
SavedModel export) and is killed with SIGKILL, which runs no cleanup at
all, at a different moment each time:

1. while the checkpoint of round 1 is being written (its staging folder
   `program_state_1_temp*` exists);
2. during the evaluation after round 2, while `best_model` is being
   written (its staging folder `best_model.tmp-*` exists);
3. at a random moment: once a round drawn at random (seeded) has started,
   after a random extra delay;
4. during the export at the end (`exported_model.tmp-*` exists).

Each time the next child resumes the same run folder. The last resume, in
this process, must give the final weights, `metrics.csv` and per-round
values of a run that was never killed, every started round counted in the
ledger once, and no staged leftovers; the staging folders the kills left
are never loaded (the resumes would fail or differ). federated_test.py
kills the real binary and its TFF worker; this test reaches the moments
that are too short to hit there.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests import testing_utils
from tests.training import fake_process
from tests.training import run_files
from tff_brats.training import federated

pytestmark = pytest.mark.slow

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
_CLIENTS = ('a', 'b', 'c')
_ROUNDS = 4
_SEED = 20261206  # of the random trial

_CHILD = textwrap.dedent(
  """
  import sys
  from tests.training import crash_resume_test, fake_process
  data_dir, run_dir, resume = sys.argv[1], sys.argv[2], sys.argv[3] == '1'
  fake_process.run_loop(
    crash_resume_test.config(data_dir), run_dir, resume=resume, export=True
  )
  """
)


def config(data_dir):
  """The run every trial makes (`fake_process.four_round_config`)."""
  return fake_process.four_round_config(data_dir)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  testing_utils.write_three_institutions(str(root))
  return str(root)


def _kill_when(data_dir, run_dir, resume, moment, timeout=300):
  """Starts a child on `run_dir` and SIGKILLs it once `moment()` is true.

  Returns:
    What `moment()` returned (true) when the child was killed.
  """
  child = subprocess.Popen(
    [sys.executable, '-c', _CHILD, data_dir, run_dir, '1' if resume else '0'],
    cwd=_REPO,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      seen = moment()
      if seen:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        return seen
      if child.poll() is not None:
        raise AssertionError(
          f'the child ended (status {child.returncode}) before the moment '
          f'to kill it: {child.stderr.read()[-3000:]}'
        )
      time.sleep(0.002)
    raise AssertionError(f'no moment to kill the child in {timeout} s')
  finally:
    if child.poll() is None:
      child.kill()
      child.wait(30)
    child.stderr.close()


def _staged(run_dir, pattern):
  return glob.glob(os.path.join(run_dir, pattern))


def _journal_rounds(run_dir):
  path = os.path.join(run_dir, federated.JOURNAL_NAME)
  if not os.path.exists(path):
    return []
  return [e['round'] for e in run_files.journal(run_dir)]


def test_sigkill_at_any_moment_resumes_to_the_uninterrupted_run(
  data_dir, tmp_path
):
  straight = str(tmp_path / 'straight')
  fake_process.run_loop(config(data_dir), straight)
  run_dir = str(tmp_path / 'run')
  rng = np.random.default_rng(_SEED)

  # 1. While the checkpoint of round 1 is being written.
  seen = _kill_when(
    data_dir,
    run_dir,
    False,
    lambda: _staged(run_dir, 'checkpoints/program_state_1_temp*'),
  )
  assert all(os.path.exists(p) for p in seen)  # killed inside the save

  # 2. During the evaluation after round 2, writing best_model.
  seen = _kill_when(
    data_dir, run_dir, True, lambda: _staged(run_dir, 'best_model.tmp-*')
  )
  assert all(os.path.exists(p) for p in seen)
  assert not _staged(run_dir, 'checkpoints/program_state_1_temp*')

  # 3. At a random moment of a random round (seeded: the same each run).
  round_num = int(rng.integers(2, _ROUNDS + 1))
  delay = float(rng.uniform(0.0, 0.5))
  started = []

  def random_moment():
    if round_num not in _journal_rounds(run_dir):
      return False
    started.append(started[0] if started else time.monotonic())
    return time.monotonic() - started[0] >= delay

  _kill_when(data_dir, run_dir, True, random_moment)

  # 4. During the export at the end.
  seen = _kill_when(
    data_dir, run_dir, True, lambda: _staged(run_dir, 'exported_model.tmp-*')
  )
  assert all(os.path.exists(p) for p in seen)

  # The last resume, in this process, runs to the end.
  summary, _ = fake_process.run_loop(
    config(data_dir), run_dir, resume=True, export=True
  )
  assert summary['rounds_completed'] == _ROUNDS
  for name in ('final_model', 'best_model'):
    for a, b in zip(
      run_files.weights(straight, name),
      run_files.weights(run_dir, name),
      strict=True,
    ):
      np.testing.assert_array_equal(a, b)
  ignored = ('seconds', 'release', 'epsilon_worst', 'epsilon_worst_summed')
  rows = [
    {k: v for k, v in r.items() if k not in ignored}
    for r in run_files.rows(run_dir)
  ]
  assert rows == [
    {k: v for k, v in r.items() if k not in ignored}
    for r in run_files.rows(straight)
  ]
  # Every round that started is counted once: the journal's releases are
  # 0, 1, 2, ... and the ledger holds exactly them for every institution.
  journal = run_files.journal(run_dir)
  assert [e['release'] for e in journal] == list(range(len(journal)))
  assert len(journal) >= _ROUNDS
  ledger = run_files.ledger(run_dir)
  for client in _CLIENTS:
    assert [r for r, _ in ledger.history(client)] == list(range(len(journal)))
  # Nothing staged is left, and the export is whole.
  assert _staged(run_dir, '*.tmp-*') == []
  assert _staged(run_dir, 'checkpoints/*_temp*') == []
  assert os.path.isfile(
    os.path.join(run_dir, 'exported_model', 'saved_model.pb')
  )
