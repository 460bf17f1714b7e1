"""Tests of the worker process wrapper against the real `worker_binary`."""

import os
import signal
import socket

import grpc
import portpicker
import pytest

from tff_brats.runtime import worker


def _port_open(port: int) -> bool:
  with socket.socket() as s:
    s.settimeout(0.2)
    return s.connect_ex(('localhost', port)) == 0


def test_worker_binary_path_is_executable():
  path = worker.worker_binary_path()
  assert os.path.basename(path) == 'worker_binary'
  assert os.access(path, os.X_OK)


def _serving(address: str) -> bool:
  """Whether a gRPC server answers at `address` (a TCP or unix: target)."""
  channel = grpc.insecure_channel(address)
  try:
    grpc.channel_ready_future(channel).result(timeout=0.5)
    return True
  except grpc.FutureTimeoutError:
    return False
  finally:
    channel.close()


@pytest.mark.parametrize('isolation', ['namespace', 'none'])
def test_start_serve_stop(tmp_path, isolation):
  port = portpicker.pick_unused_port()
  log_path = str(tmp_path / 'logs' / 'worker.log')
  w = worker.WorkerProcess(port, log_path, isolation=isolation)
  w.start()
  try:
    address = w.address
    w.wait_until(lambda: _serving(address), timeout=60)
    assert w.is_running()
    w.start()  # idempotent while running: same process
    assert w.is_running()
    # Reachable on this host's loopback only without isolation.
    assert _port_open(port) == (isolation == 'none')
  finally:
    w.stop()
  assert not w.is_running()
  # SIGINT is TFF's own way to stop the service: it dies of it (the
  # launcher passes it on and dies the same way).
  assert w.returncode == -signal.SIGINT
  assert os.path.exists(log_path)
  assert not _port_open(port)
  assert not _serving(address)
  if isolation == 'namespace':
    assert not os.path.exists(address[len('unix:') :])


@pytest.mark.parametrize('isolation', ['namespace', 'none'])
def test_stops_by_sigint_when_the_parent_ignores_it(tmp_path, isolation):
  # As under `nohup` or `cmd &` in a script: an ignored SIGINT would be
  # inherited, and stop() would wait 10 s and kill the worker instead.
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    w = worker.WorkerProcess(
      portpicker.pick_unused_port(),
      str(tmp_path / 'worker.log'),
      isolation=isolation,
    )
    w.start()
    try:
      address = w.address
      w.wait_until(lambda: _serving(address), timeout=60)
    finally:
      w.stop()
  finally:
    signal.signal(signal.SIGINT, previous)
  assert w.returncode == -signal.SIGINT


def test_wait_until_reports_early_exit_with_log(tmp_path):
  script = tmp_path / 'fails.sh'
  script.write_text('#!/bin/sh\necho "cannot bind port" >&2\nexit 7\n')
  script.chmod(0o755)
  w = worker.WorkerProcess(
    1234, str(tmp_path / 'w.log'), binary_path=str(script)
  )
  w.start()
  with pytest.raises(RuntimeError, match=r'exited with code 7[\s\S]*bind'):
    w.wait_until(lambda: False, timeout=30)


def test_wait_until_times_out(tmp_path):
  script = tmp_path / 'sleeps.sh'
  script.write_text('#!/bin/sh\nexec sleep 60\n')
  script.chmod(0o755)
  w = worker.WorkerProcess(
    1234, str(tmp_path / 'w.log'), binary_path=str(script)
  )
  w.start()
  try:
    with pytest.raises(RuntimeError, match='not ready after'):
      w.wait_until(lambda: False, timeout=0.3)
  finally:
    w.stop(timeout=1)
  assert not w.is_running()


def test_stop_kills_a_process_that_ignores_sigint(tmp_path):
  ready = tmp_path / 'trap-set'
  script = tmp_path / 'stubborn.sh'
  script.write_text(
    f"#!/bin/sh\ntrap '' INT\ntouch {ready}\nwhile true; do sleep 0.1; done\n"
  )
  script.chmod(0o755)
  w = worker.WorkerProcess(
    1234, str(tmp_path / 'w.log'), binary_path=str(script)
  )
  w.start()
  # SIGINT must arrive after the trap is set, or the shell simply dies of it.
  w.wait_until(ready.exists, timeout=30)
  w.stop(timeout=0.5)
  assert w.returncode == -9


@pytest.mark.parametrize('port', [0, 70000])
def test_bad_port(port, tmp_path):
  with pytest.raises(ValueError, match=f'port must be in .* Found {port}'):
    worker.WorkerProcess(port, str(tmp_path / 'w.log'))


def test_worker_environment_caps_malloc_arenas_unless_set():
  assert worker.worker_environment({'PATH': '/bin'}) == {
    'PATH': '/bin',
    'MALLOC_ARENA_MAX': '1',
  }
  # The caller's own value wins.
  assert worker.worker_environment({'MALLOC_ARENA_MAX': '8'}) == {
    'MALLOC_ARENA_MAX': '8'
  }


def test_started_process_gets_the_worker_environment(tmp_path, monkeypatch):
  monkeypatch.delenv('MALLOC_ARENA_MAX', raising=False)
  monkeypatch.setenv('TFF_BRATS_TEST_MARKER', 'inherited')
  out = tmp_path / 'env.txt'
  script = tmp_path / 'prints_env.sh'
  script.write_text(f'#!/bin/sh\nenv > {out}\nexec sleep 60\n')
  script.chmod(0o755)
  w = worker.WorkerProcess(
    1234, str(tmp_path / 'w.log'), binary_path=str(script)
  )
  w.start()
  try:
    w.wait_until(lambda: out.exists() and out.stat().st_size > 0, timeout=30)
  finally:
    w.stop(timeout=1)
  lines = out.read_text().splitlines()
  assert 'MALLOC_ARENA_MAX=1' in lines
  assert 'TFF_BRATS_TEST_MARKER=inherited' in lines
