"""Runs a TFF `worker_binary` where no other host can reach it.

TFF 0.87's C++ worker serves its executor service on `[::]:PORT` with
insecure credentials (`worker_main.cc`): on an ordinary host anyone who can
reach the port can submit TensorFlow computations, which read and write
files. This launcher closes that hole on Linux:

1. it moves itself into a new user and network namespace (`unshare(2)` with
   `CLONE_NEWUSER | CLONE_NEWNET`; no privileges needed where the kernel
   allows unprivileged user namespaces, and always as root). The new network
   namespace has only a loopback interface, which it brings up; no other
   host, and no process of the host's own network namespace, can connect to
   anything listening in it;
2. it starts the worker there (its uid and gid inside map to the caller's,
   so it reads and writes files as the caller);
3. it relays a Unix socket to the worker's port. The socket is a file in a
   folder that only the caller can open (mode 0700, socket 0600): the one
   way in, for the caller's own processes only.

The launcher ends when the worker ends, removing its socket and the
socket's folder; SIGINT or SIGTERM are passed on to the worker (then SIGKILL
after a grace period); the kernel kills the worker when the launcher dies
(parent-death signal), and sends the launcher SIGTERM when its own parent
dies (set by `worker.WorkerProcess`), so that even a parent killed by
SIGKILL leaves nothing in /tmp.

Usage (what `worker.WorkerProcess` runs; a script of the standard library
only, run by path with `python -I`, so that the process is still
single-threaded when it calls `unshare`):

  python -I .../isolated_worker.py SOCKET PORT -- BINARY ARGS...

Exit status: the worker's own (a signal that ended it ends the launcher
too); `NAMESPACE_UNAVAILABLE` (3) when the
namespaces cannot be created, with the reason on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

NAMESPACE_UNAVAILABLE = 3
# The prefix of the socket folders `worker.WorkerProcess` creates.
SOCKET_FOLDER_PREFIX = 'tff_brats-worker-'
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_PR_SET_PDEATHSIG = 1
_GRACE_SECONDS = 8.0  # below WorkerProcess.stop's 10 s
_CHUNK = 1 << 20

_libc = ctypes.CDLL(
  ctypes.util.find_library('c') or 'libc.so.6', use_errno=True
)


def enter_private_network() -> None:
  """Moves this (single-threaded) process into new user + net namespaces.

  Raises:
    OSError: The kernel refused (e.g. unprivileged user namespaces are
      disabled); the message says so.
  """
  uid, gid = os.getuid(), os.getgid()
  if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
    code = ctypes.get_errno()
    raise OSError(
      code,
      f'unshare(CLONE_NEWUSER | CLONE_NEWNET) failed: {os.strerror(code)}. '
      'This kernel does not let this user create a private network '
      'namespace (see /proc/sys/user/max_user_namespaces, '
      "kernel.unprivileged_userns_clone, or AppArmor's "
      'kernel.apparmor_restrict_unprivileged_userns)',
    )
  # The same ids inside as outside: files keep their owner.
  with open('/proc/self/setgroups', 'w') as f:
    f.write('deny')
  with open('/proc/self/uid_map', 'w') as f:
    f.write(f'{uid} {uid} 1')
  with open('/proc/self/gid_map', 'w') as f:
    f.write(f'{gid} {gid} 1')
  _bring_up_loopback()


def _bring_up_loopback() -> None:
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    request = struct.pack('16sh', b'lo', 0)
    flags = struct.unpack('16sh', fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
    fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack('16sh', b'lo', flags | _IFF_UP))


def _kill_when_parent_dies() -> None:
  _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _pump(source: socket.socket, sink: socket.socket) -> None:
  try:
    while data := source.recv(_CHUNK):
      sink.sendall(data)
  except OSError:
    pass
  finally:
    for s in (sink, source):
      with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)


def _connect_to_worker(port: int) -> socket.socket:
  last = None
  for family, address in (
    (socket.AF_INET, ('127.0.0.1', port)),
    (socket.AF_INET6, ('::1', port)),
  ):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
      s.connect(address)
      s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
      return s
    except OSError as e:
      s.close()
      last = e
  raise last


def _serve(listener: socket.socket, port: int) -> None:
  while True:
    try:
      client, _ = listener.accept()
    except OSError:
      return
    try:
      upstream = _connect_to_worker(port)
    except OSError:
      client.close()  # the worker is not listening yet: the caller retries
      continue
    for a, b in ((client, upstream), (upstream, client)):
      threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
  if len(argv) < 5 or argv[3] != '--':
    print(__doc__, file=sys.stderr)
    return 2
  socket_path, port, command = argv[1], int(argv[2]), argv[4:]
  try:
    enter_private_network()
  except OSError as e:
    print(f'[isolated_worker] {e}', file=sys.stderr, flush=True)
    return NAMESPACE_UNAVAILABLE
  old_umask = os.umask(0o177)
  try:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
  finally:
    os.umask(old_umask)
  listener.listen(64)
  worker = subprocess.Popen(
    command,
    stdin=subprocess.DEVNULL,
    close_fds=True,
    preexec_fn=_kill_when_parent_dies,
  )
  print(
    f'[isolated_worker] worker pid {worker.pid} listens on port {port} in a '
    f'private network namespace; reachable only through {socket_path}',
    file=sys.stderr,
    flush=True,
  )

  def stop(signum, frame):
    # Only signals here: the main thread is inside worker.wait().
    del frame  # unused
    if worker.returncode is None:
      worker.send_signal(signum)
      killer = threading.Timer(_GRACE_SECONDS, worker.kill)
      killer.daemon = True
      killer.start()

  signal.signal(signal.SIGINT, stop)
  signal.signal(signal.SIGTERM, stop)
  threading.Thread(target=_serve, args=(listener, port), daemon=True).start()
  code = worker.wait()  # retried after each signal handler (PEP 475)
  listener.close()
  try:
    os.unlink(socket_path)
  except OSError as e:
    if e.errno != errno.ENOENT:
      raise
  # The folder `worker.WorkerProcess` made for the socket, when it is ours
  # and empty (its owner may be gone: a parent killed by SIGKILL).
  folder = os.path.dirname(socket_path)
  if os.path.basename(folder).startswith(SOCKET_FOLDER_PREFIX):
    with contextlib.suppress(OSError):
      os.rmdir(folder)
  if code < 0:
    # Die the way the worker died, so the caller sees the same status
    # (SIGKILL and SIGSTOP take no handler, and need none reset).
    if -code not in (signal.SIGKILL, signal.SIGSTOP):
      signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
  return code if code >= 0 else 128 - code


if __name__ == '__main__':
  sys.exit(main(sys.argv))
