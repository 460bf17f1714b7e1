"""The federated loop on real disk faults: full, read-only, data gone.

The run folder lives on a small tmpfs that the test mounts (so it runs as
root, and skips with the reason otherwise). In the middle of a round the
stand-in process (`fake_process.FakeProcess`, the loop's logic in numpy;
federated_test.py runs the real TFF process) makes the fault happen for
real: it fills the file system, remounts it read-only, or moves the
prepared data away. Each fault must stop the run with an error that says
what happened and what to do; the last complete checkpoint must stay
loadable and the privacy journal readable; and once the fault is gone,
`--resume` must finish with the weights and metrics of a run that never
met it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests import testing_utils
from tests.training import fake_process
from tests.training import run_files
from tff_brats.data.errors import BratsDataError
from tff_brats.training import federated
from tff_brats.training import privacy_journal

_CLIENTS = ('a', 'b', 'c')
_ROUNDS = 4


def _mount(path, *options):
  return subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', ','.join(options), 'tmpfs', str(path)],
    capture_output=True,
    text=True,
  )


@pytest.fixture
def disk(tmp_path):
  """A 64 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
  if os.geteuid() != 0:
    pytest.skip('mounting a test file system needs root')
  path = tmp_path / 'disk'
  path.mkdir()
  result = _mount(path, 'size=64m')
  if result.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {result.stderr.strip()}')
  yield path
  subprocess.run(['umount', '-l', str(path)], check=False)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  testing_utils.write_three_institutions(str(root))
  return str(root)


def _config(data_dir):
  """The run every trial makes (`fake_process.four_round_config`)."""
  return fake_process.four_round_config(data_dir)


class _FaultInRound(fake_process.FakeProcess):
  """Makes `fault()` happen while round `round_num` trains."""

  def __init__(self, round_num, fault):
    super().__init__()
    self.round_num = round_num
    self.fault = fault

  def next(self, state, client_inputs):
    output = super().next(state, client_inputs)
    if int(output.state['round']) == self.round_num:
      self.fault()
    return output


def _run(config, run_dir, process, *, resume=False):
  summary, _ = fake_process.run_loop(
    config, run_dir, process=process, resume=resume
  )
  return summary


def _fill(path):
  """Writes zeros into `path`/filler until the file system is full."""
  block = b'\0' * (1 << 20)
  with open(os.path.join(path, 'filler'), 'wb') as f:
    with contextlib.suppress(OSError):
      while True:
        f.write(block)
        f.flush()


def _without(rows, *ignored):
  return [{k: v for k, v in r.items() if k not in ignored} for r in rows]


@pytest.fixture(scope='module')
def straight(data_dir, tmp_path_factory):
  """The run that meets no fault."""
  run_dir = str(tmp_path_factory.mktemp('straight') / 'run')
  _run(_config(data_dir), run_dir, fake_process.FakeProcess())
  return run_dir


def _assert_recovered(run_dir, straight, config, interrupted_rounds):
  """Checks the journal and checkpoint, resumes, compares with `straight`."""
  journal = privacy_journal.PrivacyJournal(
    os.path.join(run_dir, federated.JOURNAL_NAME)
  )
  entries = journal.entries()  # every line whole, or a cut-off last one
  assert [e['release'] for e in entries] == list(range(len(entries)))
  summary = _run(config, run_dir, fake_process.FakeProcess(), resume=True)
  assert summary['rounds_completed'] == _ROUNDS
  for a, b in zip(
    run_files.weights(straight, 'final_model'),
    run_files.weights(run_dir, 'final_model'),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)
  # The release counters and ε differ by the interrupted releases.
  ignored = ('seconds', 'release', 'epsilon_worst', 'epsilon_worst_summed')
  assert _without(run_files.rows(run_dir), *ignored) == _without(
    run_files.rows(straight), *ignored
  )
  # Every round that started is in the ledger once, the interrupted ones
  # too (their clients may have sent their updates).
  releases = len(run_files.journal(run_dir))
  assert releases == _ROUNDS + interrupted_rounds
  ledger = run_files.ledger(run_dir)
  for client in _CLIENTS:
    assert [r for r, _ in ledger.history(client)] == list(range(releases))


def test_a_full_disk_stops_with_the_last_checkpoint_kept(
  data_dir, straight, disk
):
  run_dir = str(disk / 'run')
  config = _config(data_dir)

  with pytest.raises(federated.RunStorageError) as raised:
    _run(config, run_dir, _FaultInRound(3, lambda: _fill(disk)))

  message = str(raised.value)
  assert f'in the run folder {run_dir}: ' in message
  assert 'No space left on device' in message or 'space' in message.lower()
  assert 'the last complete checkpoint is round 2' in message
  assert os.path.join(run_dir, 'checkpoints', 'program_state_2') in message
  assert 'continue with --resume' in message
  os.remove(os.path.join(disk, 'filler'))
  _assert_recovered(run_dir, straight, config, interrupted_rounds=1)


def test_a_read_only_folder_is_named_and_resumes_when_writable(
  data_dir, straight, disk
):
  # A run stopped in round 2 (Ctrl-C) is resumed on a folder that became
  # read-only (a remount after a storage fault, a snapshot): it stops at
  # its first write, before any round, saying so.
  run_dir = str(disk / 'run')
  config = _config(data_dir)

  def interrupt():
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _run(config, run_dir, _FaultInRound(2, interrupt))
  subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)

  with pytest.raises(federated.RunStorageError) as raised:
    _run(config, run_dir, fake_process.FakeProcess(), resume=True)

  message = str(raised.value)
  assert f'Could not write hparams.json in the run folder {run_dir}' in message
  assert 'Read-only file system' in message
  assert 'the last complete checkpoint is round 1' in message
  subprocess.run(['mount', '-o', 'remount,rw', str(disk)], check=True)
  _assert_recovered(run_dir, straight, config, interrupted_rounds=1)


def test_data_that_vanish_stop_the_run_before_the_next_use(
  data_dir, straight, tmp_path
):
  # The prepared folder is moved away while round 2 trains: round 2's
  # evaluation finds its validation shards gone and stops; nothing more is
  # released. Brought back, the run resumes to the straight result.
  data = str(tmp_path / 'data')
  shutil.copytree(data_dir, data)
  moved = str(tmp_path / 'moved')
  run_dir = str(tmp_path / 'run')
  config = _config(data)

  with pytest.raises(federated.DataVanishedError) as raised:
    _run(config, run_dir, _FaultInRound(2, lambda: os.rename(data, moved)))

  message = str(raised.value)
  assert f"data_dir {data!r}: shard '{data}/shards/validation-" in message
  assert 'of the validation cases must exist' in message
  assert 'gone at the evaluation after round 2' in message
  assert [e['round'] for e in run_files.journal(run_dir)] == [1, 2]
  # Resumed with the data still gone: stopped before anything runs, with
  # nothing released.
  with pytest.raises(BratsDataError, match=f"no manifest.json in '{data}'"):
    _run(config, run_dir, fake_process.FakeProcess(), resume=True)
  assert [e['round'] for e in run_files.journal(run_dir)] == [1, 2]
  os.rename(moved, data)
  _assert_recovered(run_dir, straight, config, interrupted_rounds=1)
