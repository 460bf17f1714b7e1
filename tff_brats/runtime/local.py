"""The project's TFF execution context on a local C++ worker, and its teardown.

Every TFF computation this project runs executes inside a `LocalRuntime`:

    with runtime.LocalRuntime(log_dir=output_dir) as rt:
      state = process.initialize()
      ...

On entry it starts one `worker_binary` (see `worker.py`), connects TFF's
remote executor to it and installs a synchronous execution context as TFF's
default. On exit (normal, exception, Ctrl-C) it removes the context, closes
the gRPC channel and stops the worker. Three more layers make sure no worker
outlives the Python process:

* `atexit`, for code that never leaves the `with` block (e.g. `sys.exit`
  from a thread, or a runtime started with `start()` and never closed);
* SIGTERM and SIGHUP handlers (installed only where the handler is still
  the default, and only from the main thread) that turn the signal into
  `SystemExit`, so the `with` block unwinds as on Ctrl-C;
* the kernel's parent-death signal, which kills the worker when the Python
  process dies by SIGKILL.

A worker that dies while the runtime is open (killed, or out of memory)
would otherwise leave TFF retrying its connection forever: TFF treats
UNAVAILABLE as retryable. The runtime's stub (`WatchedStub`) checks the
worker process whenever a call fails and, once it has ended, raises
`WorkerDiedError` naming its pid, how it ended and its log file, which TFF
does not retry.

After exit TFF is left with no default context (TFF's own lazily started,
unowned local context is not restored), so a stray computation call fails
loudly instead of starting a worker nobody stops.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
import time

from absl import logging
import grpc
import portpicker
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.executors import executors_errors
from tensorflow_federated.python.core.impl.executors import remote_executor_stub

from tff_brats.utils import checks

# TFF's own limits for the local gRPC channel (2 GB messages).
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
GRPC_CHANNEL_OPTIONS = [
  ('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
  ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
  ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
]
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

# After a failed call, how long to wait for a dying worker to be reaped
# before treating the failure as a connection blip that TFF may retry.
WORKER_EXIT_GRACE_SECONDS = 5.0

_live_runtimes: set[LocalRuntime] = set()
_live_lock = threading.Lock()


class LocalRuntime:
  """Owns a local TFF C++ worker and the execution context that uses it."""

  def __init__(
    self,
    *,
    default_num_clients: int = 0,
    log_dir: str | None = None,
    max_concurrent_computation_calls: int = -1,
    startup_timeout: float = 60.0,
    port: int | None = None,
    isolation: str = 'namespace',
  ):
    """Configures (but does not start) the runtime.

    Args:
      default_num_clients: CLIENTS cardinality for computations whose
        arguments do not determine it (TFF needs one; 0 when none is given).
      log_dir: Folder for the worker log `tff_worker-<port>.log`; when None,
        a temporary folder that is deleted on close (startup failures quote
        the end of the log in their message).
      max_concurrent_computation_calls: Passed to the worker; non-positive
        means no limit.
      startup_timeout: Seconds to wait for the worker to accept calls.
      port: The worker's port; a free one when None.
      isolation: Where the worker listens: 'namespace' (a private network
        namespace that no other host can reach, through a Unix socket only
        this user can open) or 'none' (every interface, without TLS, as
        TFF's own local context does; `worker.NONE_ISOLATION_RISK`).
    """
    checks.check_non_negative_int('default_num_clients', default_num_clients)
    checks.check_positive_number('startup_timeout', startup_timeout)
    self._default_num_clients = default_num_clients
    self._log_dir = log_dir
    self._max_calls = max_concurrent_computation_calls
    self._startup_timeout = startup_timeout
    self._port = port
    self._isolation = isolation
    self._worker = None
    self._server_pid: int | None = None
    self._channel: grpc.Channel | None = None
    self._previous_handlers: dict[int, object] = {}
    self._temporary_log_dir: str | None = None
    self._context = None

  @property
  def worker_pid(self) -> int | None:
    """Process id of `worker_binary` while the runtime is open."""
    return None if self._worker is None else self._server_pid

  @property
  def log_path(self) -> str | None:
    return None if self._worker is None else self._worker.log_path

  def __enter__(self) -> LocalRuntime:
    self.start()
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close()

  def start(self) -> None:
    """Starts the worker and installs the TFF context."""
    from tff_brats.runtime import worker as worker_lib

    if self._worker is not None:
      raise RuntimeError('This LocalRuntime is already started.')
    port = self._port or portpicker.pick_unused_port()
    log_dir = self._log_dir
    if log_dir is None:
      log_dir = self._temporary_log_dir = tempfile.mkdtemp(
        prefix='tff_brats-runtime-'
      )
    log_path = os.path.join(log_dir, f'tff_worker-{port}.log')
    self._worker = worker_lib.WorkerProcess(
      port,
      log_path,
      max_concurrent_computation_calls=self._max_calls,
      isolation=self._isolation,
    )
    if self._isolation == 'none':
      logging.warning(
        'worker_isolation=none: %s.', worker_lib.NONE_ISOLATION_RISK
      )
    with _live_lock:
      _live_runtimes.add(self)
    atexit.register(self.close)
    self._install_signal_handlers()
    try:
      self._worker.start()
      started = time.monotonic()
      # Plaintext, but only to loopback or to a Unix socket of this user.
      self._channel = grpc.insecure_channel(
        self._worker.address, GRPC_CHANNEL_OPTIONS
      )
      stub = WatchedStub(
        tff.framework.RemoteExecutorGrpcStub(self._channel), self._worker
      )
      self._worker.wait_until(lambda: stub.is_ready, self._startup_timeout)
      self._server_pid = self._worker.server_pid()
      stub.worker_pid = self._server_pid
      logging.info(
        'Started TFF worker pid %s on port %d, %s, ready after %.1f s '
        '(log: %s).',
        self._server_pid,
        port,
        'in a private network namespace'
        if self._isolation == 'namespace'
        else 'on every network interface, without TLS',
        time.monotonic() - started,
        log_path,
      )
      self._context = remote_context(stub, self._default_num_clients)
      tff.framework.set_default_context(self._context)
    except BaseException:
      self.close()
      raise

  def activate(self) -> None:
    """Makes this runtime's context TFF's default again.

    For a long-lived runtime shared by several users in one process (e.g. a
    test session), after something else (another runtime's `close`)
    changed TFF's default context.

    Raises:
      RuntimeError: The runtime is not started.
    """
    if self._worker is None or self._context is None:
      raise RuntimeError('This LocalRuntime is not started.')
    tff.framework.set_default_context(self._context)

  def close(self) -> None:
    """Removes the context and stops the worker (idempotent)."""
    worker, self._worker = self._worker, None
    if worker is None:
      return
    self._context = None
    with _live_lock:
      _live_runtimes.discard(self)
    atexit.unregister(self.close)
    self._restore_signal_handlers()
    # A context left behind would send calls to a dead port.
    tff.test.set_no_default_context()
    if self._channel is not None:
      self._channel.close()
      self._channel = None
    worker.stop()
    if self._temporary_log_dir is not None:
      shutil.rmtree(self._temporary_log_dir, ignore_errors=True)
      self._temporary_log_dir = None

  def _install_signal_handlers(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return
    for signum in _HANDLED_SIGNALS:
      if signal.getsignal(signum) is signal.SIG_DFL:
        self._previous_handlers[signum] = signal.signal(signum, exit_on_signal)

  def _restore_signal_handlers(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return
    for signum, handler in self._previous_handlers.items():
      if signal.getsignal(signum) is exit_on_signal:
        signal.signal(signum, handler)
    self._previous_handlers.clear()


class WorkerError(RuntimeError):
  """The TFF worker of a runtime failed a computation (e.g. out of memory)."""


class WorkerDiedError(WorkerError):
  """The TFF worker of a runtime ended while a computation needed it."""


def _details(error: Exception) -> str:
  if isinstance(error, grpc.Call):
    return f'{error.code().name}: {str(error.details()).strip()}'
  return str(error)


def describe_exit(returncode: int | None) -> str:
  """'exited with status 3', 'killed by SIGKILL (signal 9)', ..."""
  if returncode is None:
    return 'is still running'
  if returncode < 0:
    try:
      name = signal.Signals(-returncode).name
    except ValueError:
      name = 'an unknown signal'
    hint = ''
    if -returncode == signal.SIGKILL:
      hint = ' (by a user, or by the kernel when memory ran out)'
    elif -returncode == signal.SIGABRT:
      hint = ' (an abort, e.g. a failed memory allocation)'
    return f'was killed by {name} (signal {-returncode}){hint}'
  return f'exited with status {returncode}'


class WatchedStub(remote_executor_stub.RemoteExecutorStub):
  """TFF's gRPC stub, with a check of the worker after every failed call.

  A call that fails while the worker process has ended raises
  `WorkerDiedError` (not retryable, so TFF's execution context stops at
  once); other failures pass through unchanged (TFF retries UNAVAILABLE
  while the worker lives, e.g. during a restart of the channel).
  """

  def __init__(
    self, stub, worker, grace_seconds: float = WORKER_EXIT_GRACE_SECONDS
  ):
    """Wraps `stub`, a `tff.framework.RemoteExecutorGrpcStub`.

    Args:
      stub: The stub that makes the calls.
      worker: The `worker.WorkerProcess` behind it.
      grace_seconds: How long a failed call waits for the worker process
        to be seen ended before passing the failure on.
    """
    self._stub = stub
    self._worker = worker
    self._grace_seconds = grace_seconds
    # The pid of `worker_binary` itself, once known (under namespace
    # isolation `worker.pid` is its launcher's).
    self.worker_pid: int | None = None

  @property
  def is_ready(self) -> bool:
    return self._stub.is_ready

  def _call(self, name: str, request):
    try:
      return getattr(self._stub, name)(request)
    except executors_errors.RetryableError as e:
      # UNAVAILABLE: a dead worker, or a blip that TFF may retry.
      self._raise_if_dead(e, wait=True)
      raise
    except grpc.RpcError as e:
      # Not retried by TFF: the worker failed the call (e.g. out of memory).
      self._raise_if_dead(e, wait=False)
      raise WorkerError(
        f'The TFF worker (process {self.worker_pid or self._worker.pid}, port '
        f'{self._worker.port}) failed a computation: {_details(e)}. Its log '
        f'is {self._worker.log_path}.'
      ) from e

  def _raise_if_dead(self, error: Exception, *, wait: bool) -> None:
    deadline = time.monotonic() + (self._grace_seconds if wait else 0.0)
    while self._worker.is_running():
      if time.monotonic() >= deadline:
        return
      time.sleep(0.1)
    raise WorkerDiedError(
      f'The TFF worker (process {self.worker_pid or self._worker.pid}, port '
      f'{self._worker.port}) {describe_exit(self._worker.returncode)} during '
      f'a computation; gRPC said: {_details(error)}. Its log is '
      f'{self._worker.log_path}; it ends with:\n'
      f'{self._worker.log_tail(2000).rstrip() or "(empty)"}\n'
      'A training run continues from its last checkpoint with --resume.'
    ) from error

  def get_executor(self, request):
    return self._call('get_executor', request)

  def create_value(self, request):
    return self._call('create_value', request)

  def create_struct(self, request):
    return self._call('create_struct', request)

  def create_call(self, request):
    return self._call('create_call', request)

  def create_selection(self, request):
    return self._call('create_selection', request)

  def compute(self, request):
    return self._call('compute', request)

  def dispose(self, request):
    return self._call('dispose', request)

  def dispose_executor(self, request):
    return self._call('dispose_executor', request)


def close_all() -> None:
  """Closes every open runtime of this process (e.g. from a signal handler)."""
  with _live_lock:
    runtimes = list(_live_runtimes)
  for rt in runtimes:
    rt.close()


def exit_on_signal(signum, frame) -> None:
  """A SIGTERM/SIGHUP handler that unwinds as Ctrl-C does (SystemExit)."""
  del frame  # unused
  logging.warning(
    'Received %s; stopping TFF workers and exiting.',
    signal.Signals(signum).name,
  )
  raise SystemExit(128 + signum)


def wait_for_worker(worker, timeout: float) -> None:
  """Waits until `worker` (a started `worker.WorkerProcess`) serves.

  Raises:
    RuntimeError: It ended or was not ready in time (`wait_until`).
  """
  with grpc.insecure_channel(worker.address, GRPC_CHANNEL_OPTIONS) as channel:
    stub = tff.framework.RemoteExecutorGrpcStub(channel)
    worker.wait_until(lambda: stub.is_ready, timeout)


def remote_context(
  stub,
  default_num_clients: int,
  context_type=tff.framework.SyncExecutionContext,
):
  """A TFF context (sync, or `tff.framework.AsyncExecutionContext`) whose
  executors run on the worker behind `stub`; computations whose arguments
  do not fix the CLIENTS cardinality get `default_num_clients`."""

  def stack_fn(cardinalities):
    if cardinalities.get(tff.CLIENTS) is None:
      cardinalities[tff.CLIENTS] = default_num_clients
    executor = tff.framework.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  factory = tff.framework.ResourceManagingExecutorFactory(
    executor_stack_fn=stack_fn
  )
  return context_type(
    executor_fn=factory,
    compiler_fn=tff.backends.native.desugar_and_transform_to_native,
    transform_args=tff.tensorflow.transform_args,
    transform_result=tff.tensorflow.transform_result,
  )
