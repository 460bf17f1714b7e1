"""Tests of tff_brats.runtime.tls and .certificates, against a real worker.

A TFF worker runs in its private network namespace (reachable only through
its Unix socket) and a `TlsTerminator` listens on 127.0.0.1 in front of it,
as a site runs them. The certificates are made here, for two unrelated
studies: the second one's certificates must not get in. Everything stays on
loopback.
"""

import contextlib
import os
import stat

from cryptography import x509
import grpc
import numpy as np
import portpicker
import psutil
import pytest
import tensorflow_federated as tff

from tff_brats.runtime import certificates
from tff_brats.runtime import local
from tff_brats.runtime import tls
from tff_brats.runtime import worker as worker_lib

pytestmark = pytest.mark.slow  # starts a worker (seconds)

_HOSTS = ('localhost', '127.0.0.1')


@tff.tensorflow.computation(np.int32)
def _add_one(x):
  return x + 1


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('study'))
  certificates.write_study_certificates(folder, {'site_a': _HOSTS})
  return folder


@pytest.fixture(scope='module')
def other_study(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('other_study'))
  certificates.write_study_certificates(folder, {'site_a': _HOSTS})
  return folder


@pytest.fixture(scope='module')
def worker(tmp_path_factory):
  log = str(tmp_path_factory.mktemp('worker') / 'worker.log')
  process = worker_lib.WorkerProcess(portpicker.pick_unused_port(), log)
  process.start()
  try:
    local.wait_for_worker(process, 60)
    yield process
  finally:
    process.stop()


@pytest.fixture
def terminator(worker, study):
  with tls.TlsTerminator(
    worker.address,
    host='127.0.0.1',
    port=0,
    certificate_file=os.path.join(study, 'site_a.pem'),
    private_key_file=os.path.join(study, 'site_a.key'),
    client_ca_file=os.path.join(study, 'ca.pem'),
  ) as t:
    yield t


def _credentials(folder, client=True):
  return tls.channel_credentials(
    os.path.join(folder, 'ca.pem'),
    os.path.join(folder, 'coordinator.pem') if client else None,
    os.path.join(folder, 'coordinator.key') if client else None,
  )


def _ready(channel, timeout=5.0) -> bool:
  future = grpc.channel_ready_future(channel)
  try:
    future.result(timeout=timeout)
    return True
  except grpc.FutureTimeoutError:
    return False
  finally:
    future.cancel()  # stops its polling before the channel closes


@contextlib.contextmanager
def _remote_context(channel):
  stub = tff.framework.RemoteExecutorGrpcStub(channel)
  tff.framework.set_default_context(local.remote_context(stub, 1))
  try:
    yield
  finally:
    tff.test.set_no_default_context()


def test_a_computation_runs_over_mutual_tls(terminator, study):
  address = f'localhost:{terminator.port}'
  with grpc.secure_channel(address, _credentials(study)) as channel:
    assert _ready(channel)
    with _remote_context(channel):
      assert _add_one(np.int32(41)) == 42
  assert terminator.accepted >= 1
  assert terminator.refused == 0


def test_by_ip_address_too(terminator, study):
  address = f'127.0.0.1:{terminator.port}'
  with grpc.secure_channel(address, _credentials(study)) as channel:
    assert _ready(channel)


@pytest.mark.parametrize(
  'case',
  [
    'client certificate of another study',
    'no client certificate',
    'server of another study',
    'plaintext',
  ],
)
def test_refused(terminator, study, other_study, case):
  address = f'localhost:{terminator.port}'
  if case == 'plaintext':
    channel = grpc.insecure_channel(address)
  elif case == 'no client certificate':
    channel = grpc.secure_channel(address, _credentials(study, client=False))
  elif case == 'server of another study':
    # The client trusts only the other study's CA (and shows its
    # certificate): it must reject this site's certificate.
    channel = grpc.secure_channel(address, _credentials(other_study))
  else:
    # This study's CA for the server, the other study's client certificate.
    credentials = tls.channel_credentials(
      os.path.join(study, 'ca.pem'),
      os.path.join(other_study, 'coordinator.pem'),
      os.path.join(other_study, 'coordinator.key'),
    )
    channel = grpc.secure_channel(address, credentials)
  with channel:
    assert not _ready(channel, timeout=1.5)
  assert terminator.accepted == 0
  assert terminator.refused >= 1


def test_listens_only_where_asked(terminator):
  listening = [
    c.laddr
    for c in psutil.Process().net_connections(kind='inet')
    if c.status == psutil.CONN_LISTEN and c.laddr.port == terminator.port
  ]
  assert [(a.ip, a.port) for a in listening] == [('127.0.0.1', terminator.port)]


def test_the_plaintext_side_must_be_local(study):
  with pytest.raises(ValueError, match="target must be .* Found '10.0.0.5:80'"):
    tls.TlsTerminator(
      '10.0.0.5:80',
      certificate_file=os.path.join(study, 'site_a.pem'),
      private_key_file=os.path.join(study, 'site_a.key'),
      client_ca_file=None,
    )


def test_bad_files(study, other_study, tmp_path):
  missing = str(tmp_path / 'missing.pem')
  with pytest.raises(ValueError, match=f'certificate must be .* {missing!r}'):
    tls.server_context(missing, os.path.join(study, 'site_a.key'), None)
  with pytest.raises(ValueError, match='must be a matching PEM pair'):
    tls.server_context(
      os.path.join(study, 'site_a.pem'),
      os.path.join(other_study, 'site_a.key'),
      None,
    )
  with pytest.raises(ValueError, match='given together'):
    tls.channel_credentials(
      os.path.join(study, 'ca.pem'), os.path.join(study, 'coordinator.pem')
    )


class TestCheckSiteAddress:
  def test_plaintext_to_another_host_is_refused(self):
    with pytest.raises(
      ValueError, match=r"site 'h1' at 'h1.example:8443' .*--tls_ca"
    ):
      tls.check_site_address('h1', 'h1.example:8443', tls=False)

  @pytest.mark.parametrize(
    'address', ['localhost:1', '127.0.0.1:1', '127.8.0.3:1', '[::1]:1']
  )
  def test_plaintext_on_loopback_is_allowed(self, address):
    tls.check_site_address('h1', address, tls=False)

  def test_tls_to_another_host_is_allowed(self):
    tls.check_site_address('h1', '10.1.2.3:8443', tls=True)

  def test_the_explicit_flag_allows_it_with_a_warning(self, monkeypatch):
    warnings = []
    monkeypatch.setattr(
      tls.logging, 'warning', lambda msg, *args: warnings.append(msg % args)
    )
    tls.check_site_address(
      'h1', '10.1.2.3:8443', tls=False, allow_plaintext=True
    )
    (warning,) = warnings
    assert 'h1 at 10.1.2.3:8443 without TLS' in warning

  @pytest.mark.parametrize('address', ['h1', 'h1:', ':80', 'h1:0', 'h1:x'])
  def test_malformed(self, address):
    with pytest.raises(ValueError, match='address must be HOST:PORT'):
      tls.check_site_address('h1', address, tls=True)


class TestCertificates:
  def test_files_modes_and_names(self, study):
    for name in ('ca', 'site_a', 'coordinator'):
      assert (
        stat.S_IMODE(os.stat(os.path.join(study, f'{name}.key')).st_mode)
        == 0o600
      )
      assert os.path.isfile(os.path.join(study, f'{name}.pem'))
    with open(os.path.join(study, 'site_a.pem'), 'rb') as f:
      site = x509.load_pem_x509_certificate(f.read())
    names = site.extensions.get_extension_for_class(
      x509.SubjectAlternativeName
    ).value
    assert names.get_values_for_type(x509.DNSName) == ['localhost']
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == [
      '127.0.0.1'
    ]
    with open(os.path.join(study, 'ca.pem'), 'rb') as f:
      ca = x509.load_pem_x509_certificate(f.read())
    assert site.issuer == ca.subject
    site.verify_directly_issued_by(ca)

  def test_a_server_needs_hosts(self):
    ca = certificates.make_ca('x')
    with pytest.raises(ValueError, match="server certificate of 'site_b'"):
      certificates.issue(ca, 'site_b')

  @pytest.mark.parametrize('name', ['ca', 'coordinator', 'a/b', ''])
  def test_bad_site_names(self, tmp_path, name):
    with pytest.raises(ValueError, match='site names must be'):
      certificates.write_study_certificates(str(tmp_path), {name: _HOSTS})
