"""Tests that the project owns every TFF worker it starts.

Every scenario runs a real TFF computation on a real `worker_binary`, ends
one way or another, and checks that the worker's pid is gone (a zombie
waiting for init to reap it counts as gone: it runs no code and holds no
pipe).

Endings that unwind the `with` block (an exception, Ctrl-C, SIGTERM,
SIGHUP) run in this process: they take the same path as in a binary, and
the exit status a binary would get follows from the exception that leaves
the block. Endings that run no Python cleanup at all (`os._exit`, SIGKILL)
need a process of their own that really dies: a child Python, of which
this module starts only those two, at the same time (each imports
TensorFlow, about 3 s of CPU).
"""

import logging
import os
import re
import resource
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import testing_utils
from tff_brats.runtime import local
from tff_brats.runtime import worker as worker_lib

# Starts ten TFF workers and two child Pythons (about 15 s in all).
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
    if mode == 'exit':
      os._exit(3)  # no Python cleanup at all: only the kernel can help
    if mode == 'wait':
      time.sleep(300)
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


@pytest.fixture(scope='module', autouse=True)
def children(tmp_path_factory):
  """`{mode: (child, log_dir)}` for 'exit' and 'wait'.

  Started together when the module starts, so that their imports overlap
  with the in-process tests; the tests that use them come last.
  """
  started = {}
  for mode in ('exit', 'wait'):
    log_dir = tmp_path_factory.mktemp(f'child-{mode}')
    started[mode] = (_start_child(mode, log_dir), log_dir)
  yield started
  for child, _ in started.values():
    if child.poll() is None:
      child.kill()
    child.communicate()


@pytest.fixture
def default_signal_handlers():
  """SIGINT, SIGTERM and SIGHUP as a fresh Python has them, then restored."""
  defaults = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
    signal.SIGHUP: signal.SIG_DFL,
  }
  before = {signum: signal.signal(signum, h) for signum, h in defaults.items()}
  yield
  for signum, handler in before.items():
    signal.signal(signum, handler)


@tff.tensorflow.computation(np.int32)
def _add_one(x):
  return x + 1


def _deliberate_failure():
  raise ValueError('deliberate failure')


def _signal(signum):
  def send():
    # The runtime has replaced the default action of SIGTERM and SIGHUP
    # (which would end pytest itself) and left Ctrl-C's alone.
    if signum == signal.SIGINT:
      assert signal.getsignal(signum) is signal.default_int_handler
    else:
      assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN)
    signal.raise_signal(signum)

  return send


@pytest.mark.usefixtures('default_signal_handlers')
@pytest.mark.parametrize(
  'end, exception, exit_code',
  [
    (_deliberate_failure, ValueError, None),
    # Ctrl-C: KeyboardInterrupt unwinds the `with` block; Python then
    # re-raises the signal, so a binary's exit status still says SIGINT.
    (_signal(signal.SIGINT), KeyboardInterrupt, None),
    # The runtime's handler turns these into SystemExit(128 + signal), the
    # exit status of a binary that unwinds it.
    (_signal(signal.SIGTERM), SystemExit, 128 + signal.SIGTERM),
    (_signal(signal.SIGHUP), SystemExit, 128 + signal.SIGHUP),
  ],
  ids=['raise', 'SIGINT', 'SIGTERM', 'SIGHUP'],
)
def test_no_worker_survives_unwinding(tmp_path, end, exception, exit_code):
  with pytest.raises(exception) as raised:
    with local.LocalRuntime(log_dir=str(tmp_path)) as rt:
      worker_pid = rt.worker_pid
      assert _add_one(41) == 42
      end()
  if exit_code is not None:
    assert raised.value.code == exit_code
  if exception is ValueError:
    assert 'deliberate failure' in str(raised.value)
  assert testing_utils.wait_process_gone(worker_pid), (
    f'worker {worker_pid} survived {raised.typename}'
  )
  # The handlers are back to a fresh Python's.
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


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
    log_name = os.path.basename(rt.log_path)
    assert os.path.exists(rt.log_path)
  assert rt.worker_pid is None
  assert testing_utils.wait_process_gone(worker_pid)
  assert log_name.startswith('tff_worker-')
  assert [p.name for p in tmp_path.iterdir()] == [log_name]
  # No context is left behind: a stray call fails instead of starting an
  # unowned worker.
  with pytest.raises(Exception, match='context'):
    double(1.0)
  # TensorFlow itself is still usable.
  assert tf.constant(2).numpy() == 2


def test_activate_reinstalls_the_context_after_another_runtime(tmp_path):
  @tff.tensorflow.computation(np.float32)
  def double(x):
    return x * 2.0

  with local.LocalRuntime(log_dir=str(tmp_path / 'a')) as shared:
    with local.LocalRuntime(log_dir=str(tmp_path / 'b')):
      pass  # its close removes TFF's default context
    with pytest.raises(Exception, match='context'):
      double(1.0)
    shared.activate()
    assert double(1.5) == pytest.approx(3.0)
  with pytest.raises(RuntimeError, match='not started'):
    shared.activate()


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


def test_no_worker_survives_exit_without_cleanup(children):
  child, log_dir = children['exit']
  worker_pid = _read_worker_pid(child)
  _, err = child.communicate(timeout=120)
  assert child.returncode == 3, err
  assert testing_utils.wait_process_gone(worker_pid), (
    f'worker {worker_pid} survived os._exit'
  )
  assert os.listdir(log_dir) and os.listdir(log_dir)[0].startswith(
    'tff_worker-'
  )


def test_no_worker_survives_sigkill(children):
  # No cleanup at all: the parent-death signal.
  child, log_dir = children['wait']
  worker_pid = _read_worker_pid(child)
  assert testing_utils.process_is_alive(worker_pid)
  child.send_signal(signal.SIGKILL)
  _, err = child.communicate(timeout=120)
  assert child.returncode == -signal.SIGKILL, err
  assert testing_utils.wait_process_gone(worker_pid), (
    f'worker {worker_pid} survived SIGKILL'
  )
  # The launcher, told by SIGTERM, removed its socket and the socket's
  # folder (named in the worker's log) on its way out.
  (log_name,) = os.listdir(log_dir)
  with open(os.path.join(log_dir, log_name)) as f:
    (socket_path,) = re.findall(r'reachable only through (\S+)', f.read())
  assert testing_utils.wait_path_gone(os.path.dirname(socket_path)), (
    f'{socket_path} outlived its worker'
  )


# --------------------------------------------------- network isolation ----


def _listening_ports() -> set[int]:
  """TCP ports in LISTEN state in this process's network namespace."""
  ports = set()
  for table in ('/proc/net/tcp', '/proc/net/tcp6'):
    with open(table) as f:
      for line in f.readlines()[1:]:
        fields = line.split()
        if fields[3] == '0A':  # TCP_LISTEN
          ports.add(int(fields[1].rsplit(':', 1)[1], 16))
  return ports


def _refused(host: str, port: int) -> bool:
  try:
    socket.create_connection((host, port), timeout=5).close()
  except ConnectionRefusedError:
    return True
  return False


def test_default_worker_is_unreachable_from_the_network(tmp_path):
  with local.LocalRuntime(log_dir=str(tmp_path)) as rt:
    assert _add_one(41) == 42
    worker, worker_pid = rt._worker, rt.worker_pid
    # The stray-worker check of other tests sees it under its launcher.
    assert worker_pid in testing_utils.descendant_pids('worker_binary')
    # The worker runs in a network namespace of its own ...
    assert os.readlink(f'/proc/{worker_pid}/ns/net') != os.readlink(
      '/proc/self/ns/net'
    )
    # ... so nothing listens on its port here, and connecting is refused
    # even from this host's loopback.
    assert worker.port not in _listening_ports()
    assert _refused('127.0.0.1', worker.port)
    assert _refused('::1', worker.port)
    # The one way in is a Unix socket that only this user can reach.
    assert worker.address.startswith('unix:')
    path = worker.address[len('unix:') :]
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.stat(path).st_uid == os.getuid()
  assert not os.path.exists(os.path.dirname(path))
  assert testing_utils.wait_process_gone(worker_pid)


def test_isolation_none_listens_on_every_interface_and_warns(tmp_path, caplog):
  # The behaviour the default closes (TFF's own: `[::]:PORT`, no TLS), so
  # that the test above is known to detect it.
  with caplog.at_level(logging.WARNING):
    with local.LocalRuntime(log_dir=str(tmp_path), isolation='none') as rt:
      assert _add_one(41) == 42
      port = rt._worker.port
      assert port in _listening_ports()
      assert not _refused('127.0.0.1', port)
  assert any('without TLS' in r.getMessage() for r in caplog.records)


def test_bad_isolation_is_named():
  with pytest.raises(
    ValueError,
    match=re.escape("isolation must be one of namespace, none. Found 'open'."),
  ):
    worker_lib.WorkerProcess(1234, '/tmp/unused.log', isolation='open')


# A worker that dies, or fails, under a computation.


@tff.tensorflow.computation(np.int32)
def _busy(iterations):
  """Matrix products on the worker, about 0.5 ms per iteration."""
  matrix = tf.random.stateless_uniform([200, 200], seed=[1, 2])

  def body(i, m):
    return i + 1, tf.linalg.normalize(tf.matmul(m, matrix))[0]

  _, result = tf.while_loop(lambda i, _: i < iterations, body, (0, matrix))
  return tf.reduce_sum(result)


@tff.tensorflow.computation(np.int32)
def _allocate(n):
  return tf.reduce_sum(tf.ones([n], tf.float32) * 2.0)


def test_a_killed_worker_stops_the_call_naming_it_and_its_log(tmp_path):
  # TFF retries UNAVAILABLE forever: without the runtime's check the call
  # below would never return. 10**8 iterations would take hours.
  with local.LocalRuntime(log_dir=str(tmp_path)) as rt:
    worker_pid = rt.worker_pid
    assert _busy(2) > 0  # traced, sent and run once
    timer = threading.Timer(1.0, os.kill, (worker_pid, signal.SIGKILL))
    timer.start()
    started = time.monotonic()
    with pytest.raises(local.WorkerDiedError) as raised:
      _busy(10**8)
    elapsed = time.monotonic() - started
    timer.join()
    log_path = rt.log_path
  message = str(raised.value)
  assert f'The TFF worker (process {worker_pid}, port' in message
  assert 'was killed by SIGKILL (signal 9)' in message
  assert f'Its log is {log_path}; it ends with:' in message
  assert 'listens on port' in message  # the log's last lines are quoted
  assert '--resume' in message
  # Killed after 1 s; the launcher is reaped within its grace period.
  assert elapsed < 1.0 + local.WORKER_EXIT_GRACE_SECONDS + 10, elapsed
  assert testing_utils.wait_process_gone(worker_pid)


def test_a_worker_out_of_memory_fails_the_call_naming_it(tmp_path):
  # The worker's address space is capped 256 MiB above what it uses (as a
  # cgroup or `ulimit -v` on a shared node would), then asked for 2 GiB.
  with local.LocalRuntime(log_dir=str(tmp_path)) as rt:
    worker_pid = rt.worker_pid
    assert _allocate(10) == 20.0
    with open(f'/proc/{worker_pid}/status') as f:
      (size_kib,) = [
        int(line.split()[1]) for line in f if line.startswith('VmSize')
      ]
    _, hard = resource.prlimit(worker_pid, resource.RLIMIT_AS)
    resource.prlimit(
      worker_pid, resource.RLIMIT_AS, ((size_kib << 10) + (256 << 20), hard)
    )
    started = time.monotonic()
    with pytest.raises(local.WorkerError) as raised:
      _allocate(1 << 29)
    elapsed = time.monotonic() - started
    log_path = rt.log_path
    # The worker survives its failed call and serves the next one.
    assert _allocate(10) == 20.0
  message = str(raised.value)
  assert f'The TFF worker (process {worker_pid}, port' in message
  assert 'failed a computation: INTERNAL' in message
  assert 'OOM when allocating tensor' in message
  assert f'Its log is {log_path}.' in message
  assert elapsed < 60, elapsed
  assert testing_utils.wait_process_gone(worker_pid)
