"""One TFF C++ executor service process (`worker_binary`), owned for its life.

TFF's own local execution context starts `worker_binary` as a child that
inherits the parent's stdout and is only stopped by a finaliser. After the
Python process exits the worker often lives on, holding the pipe, so that
`python train.py | tee log` or a CI step hangs forever (see DESIGN.md). This
module starts the worker itself, with

* stdout and stderr redirected to a log file (never the parent's pipes),
* stdin from /dev/null and its own session, so a terminal's Ctrl-C reaches
  only the Python process, which then stops the worker in order,
* on Linux, `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills the worker when
  the thread that started it dies, even by `kill -9`, when no Python cleanup
  can run. The worker must therefore be started from a thread that outlives
  it (the main thread in every binary of this project).

`stop()` sends SIGINT (what TFF itself sends), waits, then SIGKILLs.

Isolation (`isolation='namespace'`, the default): TFF's worker listens on
all interfaces without TLS. It is therefore started through
`isolated_worker.py`, in a private network namespace that no other host
can reach, and is reached through a Unix socket in a folder only this user
can open (`address` is then `unix:…`). `isolation='none'` runs it on the
host's network as TFF does (`address` is `localhost:PORT`): anyone who can
reach the port can run TensorFlow operations as this user.

The worker inherits the parent's environment with one default added:
`MALLOC_ARENA_MAX=1` (unless the environment already sets it). The worker is
linked against glibc's malloc, which gives each busy thread an arena of its
own; over many rounds the freed model copies fragment those arenas and the
worker's memory keeps creeping up (peak +12 % from round 5 to 150 with two
arenas, +1.9 % with one; `benchmarks/memory_rounds.py`, README). One arena
cost nothing measurable in a 64³ round (21.3 s against 21.0 s,
`benchmarks/federated_round.py`) but about 25 % in rounds of tiny
models, where allocation is a larger share of the work; on a many-core
host training many clients at once, `MALLOC_ARENA_MAX=4` (or more) in the
environment trades memory for less allocator contention.
"""

from __future__ import annotations

from collections.abc import Mapping
import ctypes
import ctypes.util
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import logging

from tff_brats.runtime import isolated_worker

_PR_SET_PDEATHSIG = 1

ISOLATIONS = ('namespace', 'none')
NONE_ISOLATION_RISK = (
  "TFF's worker listens on every network interface without TLS or "
  'authentication: anyone who can reach this port can run TensorFlow '
  'operations (which read and write files) as this user'
)

# Environment defaults for the worker; the parent's own values win.
WORKER_ENVIRONMENT_DEFAULTS = {'MALLOC_ARENA_MAX': '1'}


def worker_environment(
  base: Mapping[str, str] | None = None,
) -> dict[str, str]:
  """The worker's environment: `base` (default os.environ) plus defaults."""
  environment = dict(os.environ if base is None else base)
  for name, value in WORKER_ENVIRONMENT_DEFAULTS.items():
    environment.setdefault(name, value)
  return environment


def worker_binary_path() -> str:
  """Path of the `worker_binary` shipped inside the TFF wheel."""
  spec = importlib.util.find_spec('tensorflow_federated')
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError(
      'tensorflow_federated is not installed; run tools/bootstrap.sh.'
    )
  package_dir = next(iter(spec.submodule_search_locations))
  path = os.path.join(package_dir, 'data', 'worker_binary')
  if not os.path.isfile(path):
    raise RuntimeError(f'Expected the TFF worker binary at {path}.')
  return path


class WorkerProcess:
  """A `worker_binary` serving TFF's executor service on a local port."""

  def __init__(
    self,
    port: int,
    log_path: str,
    *,
    max_concurrent_computation_calls: int = -1,
    binary_path: str | None = None,
    isolation: str = 'namespace',
    cwd: str | None = None,
  ):
    """Describes (but does not start) a worker.

    Args:
      port: TCP port the executor service listens on.
      log_path: File that receives the worker's stdout and stderr (appended).
      max_concurrent_computation_calls: Passed to the binary; non-positive
        means no limit.
      binary_path: The executable; defaults to the one inside the TFF wheel.
      isolation: 'namespace' (a private network namespace, reached through
        a Unix socket) or 'none' (the host's network; see the module
        docstring).
      cwd: The worker's working folder, against which relative paths in
        computations resolve (a site's data root); default: this process's.
    """
    if not 0 < port < 65536:
      raise ValueError(f'port must be in [1, 65535]. Found {port}.')
    if isolation not in ISOLATIONS:
      raise ValueError(
        f'isolation must be one of {", ".join(ISOLATIONS)}. Found {isolation!r}.'
      )
    if isolation == 'namespace' and not sys.platform.startswith('linux'):
      raise ValueError(
        "isolation='namespace' needs Linux network namespaces; this is "
        f"{sys.platform}. isolation='none' means: {NONE_ISOLATION_RISK}."
      )
    self.isolation = isolation
    self._socket_dir: str | None = None
    self.port = port
    self.log_path = log_path
    self._max_calls = max_concurrent_computation_calls
    self._binary_path = binary_path or worker_binary_path()
    self._process: subprocess.Popen[bytes] | None = None
    if cwd is not None and not os.path.isdir(cwd):
      raise ValueError(f'cwd must be an existing folder. Found {cwd!r}.')
    self.cwd = cwd

  @property
  def address(self) -> str:
    """The gRPC target of the executor service (valid once started)."""
    if self.isolation == 'none':
      return f'localhost:{self.port}'
    if self._socket_dir is None:
      raise RuntimeError('The worker is not started.')
    return f'unix:{self._socket_path()}'

  def _socket_path(self) -> str:
    return os.path.join(self._socket_dir, 'executor.sock')

  @property
  def pid(self) -> int | None:
    return None if self._process is None else self._process.pid

  def start(self) -> None:
    """Starts the process (idempotent while it runs)."""
    if self.is_running():
      return
    args = [
      self._binary_path,
      f'--port={self.port}',
      f'--max_concurrent_computation_calls={self._max_calls}',
    ]
    if self.isolation == 'namespace':
      if self._socket_dir is None:
        # mkdtemp makes it 0700: only this user can reach the socket.
        self._socket_dir = tempfile.mkdtemp(
          prefix=isolated_worker.SOCKET_FOLDER_PREFIX
        )
      args = [
        sys.executable,
        '-I',
        isolated_worker.__file__,
        self._socket_path(),
        str(self.port),
        '--',
        *args,
      ]
    os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
    with open(self.log_path, 'ab') as log:
      self._process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        close_fds=True,
        cwd=self.cwd,
        env=worker_environment(),
        start_new_session=True,
        preexec_fn=(
          _terminate_when_parent_dies
          if self.isolation == 'namespace'
          else _kill_when_parent_dies
        ),
      )
    logging.debug(
      'Started process %d for the TFF worker (%s isolation).',
      self._process.pid,
      self.isolation,
    )

  def server_pid(self) -> int | None:
    """The pid of `worker_binary` itself (the started process, or the
    launcher's child under namespace isolation; None before it exists)."""
    if self._process is None:
      return None
    if self.isolation == 'none':
      return self._process.pid
    for pid, (parent, _, _) in process_table().items():
      if parent == self._process.pid:
        return pid
    return None

  def is_running(self) -> bool:
    return self._process is not None and self._process.poll() is None

  @property
  def returncode(self) -> int | None:
    return None if self._process is None else self._process.poll()

  def stop(self, timeout: float = 10.0) -> None:
    """Stops the process: SIGINT, then SIGKILL after `timeout` seconds."""
    process = self._process
    if process is None:
      return
    if process.poll() is None:
      try:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        logging.warning(
          'TFF worker pid %d ignored SIGINT for %.0f s; killing it.',
          process.pid,
          timeout,
        )
        process.kill()
        process.wait()
    logging.info('Stopped TFF worker pid %d.', process.pid)
    if self._socket_dir is not None:
      shutil.rmtree(self._socket_dir, ignore_errors=True)
      self._socket_dir = None

  def log_tail(self, max_bytes: int = 4000) -> str:
    """The end of the worker's log, for error messages."""
    try:
      with open(self.log_path, 'rb') as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - max_bytes))
        return f.read().decode('utf-8', errors='replace')
    except OSError:
      return ''

  def wait_until(self, is_ready, timeout: float) -> None:
    """Polls `is_ready()` until it is true; fails if the process dies first.

    Args:
      is_ready: A callable returning True once the service answers.
      timeout: Seconds to wait before giving up.

    Raises:
      RuntimeError: The process exited or `timeout` passed; the message
        holds the end of the worker's log.
    """
    deadline = time.monotonic() + timeout
    while not is_ready():
      if not self.is_running():
        hint = ''
        if (
          self.isolation == 'namespace'
          and self.returncode == isolated_worker.NAMESPACE_UNAVAILABLE
        ):
          hint = (
            ' The worker could not be isolated in a private network '
            'namespace (the reason is in the log below). Allow user '
            'namespaces on this host, or pass --worker_isolation=none '
            f'knowing that {NONE_ISOLATION_RISK}.'
          )
        raise RuntimeError(
          f'TFF worker exited with code {self.returncode} before it was '
          f'ready (log {self.log_path}).{hint}\n{self.log_tail()}'
        )
      if time.monotonic() > deadline:
        raise RuntimeError(
          f'TFF worker on port {self.port} was not ready after {timeout:.0f} '
          f's (log {self.log_path}):\n{self.log_tail()}'
        )
      time.sleep(0.05)


def process_table() -> dict[int, tuple[int, str, str]]:
  """Every live process: pid -> (parent pid, name, state), from /proc."""
  table = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
    except OSError:
      continue  # ended meanwhile
    name = stat[stat.index('(') + 1 : stat.rindex(')')]
    fields = stat.rsplit(')', 1)[1].split()
    table[int(entry)] = (int(fields[1]), name, fields[0])
  return table


def _load_prctl():
  if not sys.platform.startswith('linux'):
    return None
  libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  prctl = libc.prctl
  prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
  prctl.restype = ctypes.c_int
  return prctl


# Resolved before any fork: the child only makes one foreign call.
_PRCTL = _load_prctl()


def _kill_when_parent_dies() -> None:
  # Runs in the child between fork and exec; keep it to system calls.
  _default_sigint()
  if _PRCTL is not None:
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _terminate_when_parent_dies() -> None:
  # The isolating launcher gets SIGTERM instead: it stops its worker (which
  # dies with it in any case) and removes its socket and the socket's
  # folder, which a SIGKILL would leave behind in /tmp.
  _default_sigint()
  if _PRCTL is not None:
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _default_sigint() -> None:
  # SIGINT is how `stop` ends the worker (and the launcher passes it on to
  # its own worker), but an ignored signal stays ignored across exec: a
  # trainer started with SIGINT ignored (`nohup`, or `cmd &` in a script)
  # would leave its worker deaf to it and `stop` would wait for SIGKILL.
  signal.signal(signal.SIGINT, signal.SIG_DFL)
