"""TLS between the coordinator and a site's TFF worker, mutual by default.

TFF 0.87's C++ worker has no TLS and no authentication: it serves its
executor service in plaintext to whoever connects. A site therefore never
exposes it. The worker runs in a private network namespace and can be
reached only through a Unix socket of the site's user
(`isolated_worker`). In front of that socket, `TlsTerminator` accepts
TLS 1.2+ connections on the address the site chooses:

* it presents the site's server certificate;
* by default it requires a client certificate signed by the study's CA
  (mutual TLS), so only the coordinator holding that certificate gets in;
* it relays the decrypted bytes to the worker's socket. It speaks no gRPC,
  only TLS with ALPN 'h2', which gRPC clients need.

On the coordinator, `channel_credentials` builds the matching gRPC
credentials: the study's CA, to check the site's certificate, and the
coordinator's own certificate and key.

`check_site_address` is the coordinator's guard. A plaintext channel is
refused for any host other than loopback, unless the caller explicitly
accepts the risk.

The terminator runs an asyncio event loop in a daemon thread (asyncio's
TLS runs in memory BIOs on that one thread, so one OpenSSL object is never
used by two threads). `close` stops it and drops every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import threading

from absl import logging
import grpc

_HANDSHAKE_TIMEOUT_SECONDS = 10.0
PLAINTEXT_RISK = (
  'a plaintext channel to another host carries the model, the privatised '
  'updates and the computations unencrypted and unauthenticated: anyone on '
  'the path can read them, and anyone who can reach the site can run '
  'TensorFlow operations there'
)


def server_context(
  certificate_file: str, private_key_file: str, client_ca_file: str | None
) -> ssl.SSLContext:
  """A TLS 1.2+ server context; client certificates required if a CA is given.

  Raises:
    ValueError: A file is missing or unreadable, or the key does not match
      the certificate (the message names the file).
  """
  files = [('certificate', certificate_file), ('private_key', private_key_file)]
  if client_ca_file is not None:
    files.append(('client_ca', client_ca_file))
  for field, path in files:
    _check_readable(field, path)
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.minimum_version = ssl.TLSVersion.TLSv1_2
  try:
    context.load_cert_chain(certificate_file, private_key_file)
  except ssl.SSLError as e:
    raise ValueError(
      f'certificate {certificate_file!r} and private_key '
      f'{private_key_file!r} must be a matching PEM pair. Found: {e}.'
    ) from None
  if client_ca_file is not None:
    try:
      context.load_verify_locations(cafile=client_ca_file)
    except ssl.SSLError as e:
      raise ValueError(
        f'client_ca {client_ca_file!r} must hold PEM CA certificates. '
        f'Found: {e}.'
      ) from None
    context.verify_mode = ssl.CERT_REQUIRED
  context.set_alpn_protocols(['h2'])
  return context


def channel_credentials(
  ca_file: str,
  certificate_file: str | None = None,
  private_key_file: str | None = None,
) -> grpc.ChannelCredentials:
  """gRPC credentials that trust `ca_file` and present a client certificate.

  Raises:
    ValueError: A file is missing, or only one of the certificate and key
      is given.
  """
  if (certificate_file is None) != (private_key_file is None):
    raise ValueError(
      'certificate and private_key must be given together (mutual TLS) or '
      f'both left out. Found certificate={certificate_file!r}, '
      f'private_key={private_key_file!r}.'
    )
  _check_readable('ca', ca_file)
  chain = key = None
  if certificate_file is not None:
    _check_readable('certificate', certificate_file)
    _check_readable('private_key', private_key_file)
    chain = _read(certificate_file)
    key = _read(private_key_file)
  return grpc.ssl_channel_credentials(
    root_certificates=_read(ca_file), private_key=key, certificate_chain=chain
  )


def is_loopback(address: str) -> bool:
  """Whether a gRPC target is this host only (loopback, or a Unix socket)."""
  if address.startswith('unix:'):
    return True
  host = split_address(address)[0]
  if host == 'localhost':
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def check_site_address(
  name: str, address: str, *, tls: bool, allow_plaintext: bool = False
) -> None:
  """Refuses a plaintext channel to another host unless explicitly allowed.

  Raises:
    ValueError: `address` is malformed, or plaintext to a non-loopback host
      without `allow_plaintext`.
  """
  if not address.startswith('unix:'):
    split_address(address)  # checks the form
  if tls or is_loopback(address) or allow_plaintext:
    if not tls and not is_loopback(address):
      logging.warning(
        'Site %s at %s without TLS (allowed explicitly): %s.',
        name,
        address,
        PLAINTEXT_RISK,
      )
    return
  raise ValueError(
    f'site {name!r} at {address!r} would be reached without TLS: '
    f'{PLAINTEXT_RISK}. Give the study CA (--tls_ca) and the coordinator '
    'certificate (--tls_certificate, --tls_private_key), or, only on a '
    'network you fully trust, pass --allow_plaintext_sites.'
  )


def split_address(address: str) -> tuple[str, int]:
  """('host', port) of 'host:port' or '[v6]:port'.

  Raises:
    ValueError: Not of that form, or a port outside [1, 65535].
  """
  host, sep, port = address.rpartition(':')
  if host.startswith('[') and host.endswith(']'):
    host = host[1:-1]
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(
      f'address must be HOST:PORT (or [IPv6]:PORT) with a port in '
      f'[1, 65535]. Found {address!r}.'
    )
  return host, int(port)


class TlsTerminator:
  """Accepts TLS on `host:port`, relays plaintext to `target`; see the module.

  Example:

    with TlsTerminator('unix:/run/site/executor.sock', host='0.0.0.0',
                       port=8443, certificate_file='site_a.pem',
                       private_key_file='site_a.key',
                       client_ca_file='ca.pem') as terminator:
      ...  # serve until stopped
  """

  def __init__(
    self,
    target: str,
    *,
    host: str = '127.0.0.1',
    port: int = 0,
    certificate_file: str,
    private_key_file: str,
    client_ca_file: str | None,
  ):
    """Checks the files and the target; binds nothing yet.

    Args:
      target: Where plaintext goes: 'unix:/path' or a loopback 'host:port'.
      host: Address to listen on (the site's choice: loopback by default).
      port: TCP port (0: any free one; see `port` after `start`).
      certificate_file: The site's certificate (PEM, chain first).
      private_key_file: Its private key (PEM).
      client_ca_file: CA certificates that sign allowed clients (mutual
        TLS); None accepts any client (server authentication only).

    Raises:
      ValueError: A bad file or a target that is not local.
    """
    if not target.startswith('unix:') and not is_loopback(target):
      raise ValueError(
        'target must be a Unix socket (unix:/path) or a loopback HOST:PORT: '
        f'the plaintext side never leaves this host. Found {target!r}.'
      )
    self.target = target
    self.host = host
    self._requested_port = port
    self._context = server_context(
      certificate_file, private_key_file, client_ca_file
    )
    self.mutual = client_ca_file is not None
    self.port: int | None = None
    self._loop: asyncio.AbstractEventLoop | None = None
    self._thread: threading.Thread | None = None
    self._server: asyncio.base_events.Server | None = None
    self._connections: set[_Relay] = set()
    self.refused = 0  # connections whose TLS handshake failed
    self.accepted = 0  # connections relayed to the target

  def __enter__(self) -> TlsTerminator:
    self.start()
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def start(self) -> None:
    """Binds and starts serving (in a daemon thread).

    Raises:
      OSError: The address cannot be bound.
    """
    if self._loop is not None:
      raise RuntimeError('This TlsTerminator is already started.')
    loop = self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(
      target=loop.run_forever, name='tls-terminator', daemon=True
    )
    self._thread.start()
    future = asyncio.run_coroutine_threadsafe(self._serve(), loop)
    try:
      self._server = future.result(timeout=30)
    except BaseException:
      self.close()
      raise
    self.port = self._server.sockets[0].getsockname()[1]
    logging.info(
      'TLS on %s:%d (%s) -> %s.',
      self.host,
      self.port,
      'client certificates required' if self.mutual else 'any client',
      self.target,
    )

  def close(self) -> None:
    """Stops listening and drops every connection (idempotent)."""
    loop, self._loop = self._loop, None
    if loop is None:
      return
    if loop.is_running():
      with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
      loop.call_soon_threadsafe(loop.stop)
    if self._thread is not None:
      self._thread.join(10)
    with contextlib.suppress(Exception):
      loop.close()

  async def _serve(self):
    loop = asyncio.get_running_loop()
    return await loop.create_server(
      lambda: _Relay(self), self.host, self._requested_port, reuse_address=True
    )

  async def _shutdown(self):
    if self._server is not None:
      self._server.close()
    for relay in list(self._connections):
      relay.close()

  async def _connect_target(self, relay):
    loop = asyncio.get_running_loop()
    if self.target.startswith('unix:'):
      transport, _ = await loop.create_unix_connection(
        lambda: _Back(relay), self.target[len('unix:') :]
      )
    else:
      host, port = split_address(self.target)
      transport, _ = await loop.create_connection(
        lambda: _Back(relay), host, port
      )
    return transport


class _Relay(asyncio.Protocol):
  """One client connection: TLS handshake, then bytes to and from the target.

  Reading is paused from the first moment (`connection_made`), so that no
  byte of the client's handshake is read before `loop.start_tls` takes the
  connection over; a failed handshake is counted and logged (asyncio's own
  TLS server drops it silently).
  """

  def __init__(self, terminator: TlsTerminator):
    self.terminator = terminator
    self.raw = None  # the TCP transport
    self.secure = None  # the TLS transport, once the handshake is done
    self.target = None  # the transport to the worker
    self.pending: list[bytes] = []
    self.peer = None

  def connection_made(self, transport):
    transport.pause_reading()
    self.raw = transport
    self.peer = transport.get_extra_info('peername')
    self.terminator._connections.add(self)
    asyncio.get_running_loop().create_task(self._start())

  async def _start(self):
    terminator = self.terminator
    loop = asyncio.get_running_loop()
    try:
      self.secure = await loop.start_tls(
        self.raw,
        self,
        terminator._context,
        server_side=True,
        ssl_handshake_timeout=_HANDSHAKE_TIMEOUT_SECONDS,
      )
    except (OSError, TimeoutError, EOFError) as e:
      # A wrong or missing certificate, plaintext, a scanner: refused,
      # counted and logged, never fatal.
      terminator.refused += 1
      logging.warning('TLS connection from %s refused: %r', self.peer, e)
      self.close()
      return
    try:
      self.target = await terminator._connect_target(self)
    except OSError as e:
      logging.warning(
        'TLS client %s: cannot reach %s: %s', self.peer, terminator.target, e
      )
      self.close()
      return
    terminator.accepted += 1
    for data in self.pending:
      self.target.write(data)
    self.pending.clear()

  def data_received(self, data):  # decrypted, from the client
    if self.target is not None:
      self.target.write(data)
    else:
      self.pending.append(data)

  def eof_received(self):
    self.close()

  def connection_lost(self, exc):
    self.close()

  # Flow control: the client's side is full, so stop reading the worker.
  def pause_writing(self):
    if self.target is not None:
      self.target.pause_reading()

  def resume_writing(self):
    if self.target is not None:
      self.target.resume_reading()

  def close(self):
    self.terminator._connections.discard(self)
    for transport in (self.target, self.secure, self.raw):
      if transport is not None and not transport.is_closing():
        transport.close()


class _Back(asyncio.Protocol):
  """The connection to the worker: bytes back to the client."""

  def __init__(self, relay: _Relay):
    self.relay = relay

  def data_received(self, data):
    if self.relay.secure is not None:
      self.relay.secure.write(data)

  def eof_received(self):
    self.relay.close()

  def connection_lost(self, exc):
    self.relay.close()

  # The worker's side is full, so stop reading the client.
  def pause_writing(self):
    if self.relay.secure is not None:
      self.relay.secure.pause_reading()

  def resume_writing(self):
    if self.relay.secure is not None:
      self.relay.secure.resume_reading()


def _check_readable(field: str, path: str) -> None:
  if not os.path.isfile(path) or not os.access(path, os.R_OK):
    raise ValueError(f'{field} must be a readable PEM file. Found {path!r}.')


def _read(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()
