"""Tests that the project owns every TFF worker it starts.

Each scenario runs a real TFF computation on a real `worker_binary` in a child
Python process, ends that process one way or another, and checks that the
worker's pid is gone (a zombie waiting for init to reap it counts as gone: it
runs no code and holds no pipe).
"""

import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import testing_utils
from tff_brats.runtime import local

# Each test starts Python processes that import TensorFlow (~5 s each).
pytestmark = pytest.mark.slow

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

_CHILD = textwrap.dedent(
  """
  import os, sys, time
  import tensorflow as tf
  import tensorflow_federated as tff
  from tff_brats.runtime import local

  @tff.tensorflow.computation(tf.int32)
  def add_one(x):
    return x + 1

  mode = sys.argv[1]
  with local.LocalRuntime(log_dir=sys.argv[2]) as rt:
    print('result', add_one(41), flush=True)
    print('worker', rt.worker_pid, flush=True)
    if mode == 'raise':
      raise ValueError('deliberate failure')
    if mode == 'exit':
      os._exit(3)  # no Python cleanup at all: only the kernel can help
    if mode == 'wait':
      time.sleep(300)
  print('closed', flush=True)
  """
)


def _start_child(mode, log_dir):
  return subprocess.Popen(
    [sys.executable, '-c', _CHILD, mode, str(log_dir)],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    cwd=_REPO,
  )


def _read_worker_pid(child) -> int:
  for line in child.stdout:
    if line.startswith('result'):
      assert line.split() == ['result', '42']
    if line.startswith('worker'):
      return int(line.split()[1])
  raise AssertionError(f'child printed no worker pid: {child.stderr.read()}')


@pytest.mark.parametrize(
  'mode, expected_returncode',
  [('normal', 0), ('raise', 1), ('exit', 3)],
)
def test_no_worker_survives_child_exit(tmp_path, mode, expected_returncode):
  child = _start_child(mode, tmp_path)
  worker_pid = _read_worker_pid(child)
  out, err = child.communicate(timeout=120)
  assert child.returncode == expected_returncode, err
  if mode == 'raise':
    assert 'deliberate failure' in err
  if mode == 'normal':
    assert 'closed' in out
  assert testing_utils.wait_process_gone(worker_pid), (
    f'worker {worker_pid} survived {mode}'
  )
  assert os.listdir(tmp_path) and os.listdir(tmp_path)[0].startswith(
    'tff_worker-'
  )


@pytest.mark.parametrize(
  'signum, expected_returncode',
  [
    # KeyboardInterrupt unwinds the `with` block; Python then re-raises the
    # signal so that the exit status still says SIGINT.
    (signal.SIGINT, -signal.SIGINT),
    (signal.SIGTERM, 128 + signal.SIGTERM),
    (signal.SIGHUP, 128 + signal.SIGHUP),
    (signal.SIGKILL, -signal.SIGKILL),  # no cleanup: parent-death signal
  ],
)
def test_no_worker_survives_signal(tmp_path, signum, expected_returncode):
  child = _start_child('wait', tmp_path)
  worker_pid = _read_worker_pid(child)
  assert testing_utils.process_is_alive(worker_pid)
  child.send_signal(signum)
  _, err = child.communicate(timeout=120)
  assert child.returncode == expected_returncode, err
  assert testing_utils.wait_process_gone(worker_pid), (
    f'worker {worker_pid} survived {signum!r}'
  )


def test_runtime_runs_federated_computation_and_cleans_up(tmp_path):
  @tff.tensorflow.computation(np.float32)
  def double(x):
    return x * 2.0

  @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
  def sum_of_doubles(values):
    return tff.federated_sum(tff.federated_map(double, values))

  with local.LocalRuntime(log_dir=str(tmp_path)) as rt:
    worker_pid = rt.worker_pid
    assert sum_of_doubles([1.0, 2.0, 4.5]) == pytest.approx(15.0)
    assert os.path.exists(rt.log_path)
  assert rt.worker_pid is None
  assert testing_utils.wait_process_gone(worker_pid)
  # No context is left behind: a stray call fails instead of starting an
  # unowned worker.
  with pytest.raises(Exception, match='context'):
    double(1.0)


def test_close_is_idempotent_and_restores_signal_handlers(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  rt = local.LocalRuntime(log_dir=str(tmp_path))
  rt.start()
  if before is signal.SIG_DFL:
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
  rt.close()
  rt.close()
  assert signal.getsignal(signal.SIGTERM) is before


def test_temporary_log_dir_is_removed_on_close():
  with local.LocalRuntime() as rt:
    log_dir = os.path.dirname(rt.log_path)
    assert os.path.basename(log_dir).startswith('tff_brats-runtime-')
    assert os.path.exists(rt.log_path)
  assert not os.path.exists(log_dir)


def test_start_twice_is_an_error(tmp_path):
  with (
    local.LocalRuntime(log_dir=str(tmp_path)) as rt,
    pytest.raises(RuntimeError, match='already started'),
  ):
    rt.start()


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (
      {'default_num_clients': -1},
      'default_num_clients must be a non-negative integer. Found -1.',
    ),
    (
      {'startup_timeout': 0},
      'startup_timeout must be a positive number. Found 0.',
    ),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    local.LocalRuntime(**kwargs)


def test_tf_is_usable_after_runtime(tmp_path):
  with local.LocalRuntime(log_dir=str(tmp_path)):
    pass
  assert tf.constant(2).numpy() == 2
