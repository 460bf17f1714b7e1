"""Certificates for a federated study: one CA, a server per site, a client.

Mutual TLS between the coordinator and the sites (`tff_brats.runtime.tls`)
needs, for each study:

* a certificate authority (CA) that the study's members trust, and only for
  this study: `ca.pem` (public, copied to every host) and `ca.key` (kept by
  whoever issues certificates, ideally offline);
* a server certificate per site, for the names and addresses the
  coordinator dials (`<site>.pem`, `<site>.key`, on that site only);
* a client certificate for the coordinator (`coordinator.pem`,
  `coordinator.key`, on the coordinator only).

`write_study_certificates` writes all of them into a folder (private keys
mode 0600, every file written to a temporary name and renamed). Hospitals
with their own PKI use their own files instead; the sites and the
coordinator only read PEM files.

Keys are ECDSA P-256; certificates are valid for `days` days from one hour
ago (clock skew).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

from tff_brats.utils import atomic

CA_NAME = 'ca'
COORDINATOR_NAME = 'coordinator'


@dataclasses.dataclass(frozen=True)
class Identity:
  """A certificate and its private key, PEM-encoded."""

  certificate: bytes
  private_key: bytes


def make_ca(common_name: str, days: int = 365) -> Identity:
  """A self-signed CA certificate that may sign end-entity certificates."""
  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
  certificate = (
    _builder(name, name, key.public_key(), days)
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    .add_extension(
      x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
      ),
      critical=True,
    )
    .sign(key, hashes.SHA256())
  )
  return Identity(_certificate_pem(certificate), _key_pem(key))


def issue(
  ca: Identity,
  common_name: str,
  *,
  hosts: Sequence[str] = (),
  client: bool = False,
  days: int = 365,
) -> Identity:
  """A certificate signed by `ca`.

  Args:
    ca: The issuing CA.
    common_name: The subject's name (e.g. the site's name).
    hosts: DNS names and IP addresses the certificate is valid for (a
      server's: what the coordinator dials). Required for servers.
    client: A client certificate (the coordinator's) instead of a server's.
    days: Validity.

  Raises:
    ValueError: A server certificate without hosts.
  """
  if not client and not hosts:
    raise ValueError(
      f'hosts must name at least one DNS name or IP address for the server '
      f'certificate of {common_name!r}. Found none.'
    )
  ca_certificate = x509.load_pem_x509_certificate(ca.certificate)
  ca_key = serialization.load_pem_private_key(ca.private_key, password=None)
  key = ec.generate_private_key(ec.SECP256R1())
  subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
  builder = _builder(subject, ca_certificate.subject, key.public_key(), days)
  builder = builder.add_extension(
    x509.BasicConstraints(ca=False, path_length=None), critical=True
  ).add_extension(
    x509.ExtendedKeyUsage(
      [
        ExtendedKeyUsageOID.CLIENT_AUTH
        if client
        else ExtendedKeyUsageOID.SERVER_AUTH
      ]
    ),
    critical=False,
  )
  if hosts:
    builder = builder.add_extension(
      x509.SubjectAlternativeName([_general_name(h) for h in hosts]),
      critical=False,
    )
  certificate = builder.sign(ca_key, hashes.SHA256())
  return Identity(_certificate_pem(certificate), _key_pem(key))


def write_identity(identity: Identity, folder: str, name: str) -> None:
  """Writes `<name>.pem` and `<name>.key` (mode 0600) into `folder`."""
  os.makedirs(folder, exist_ok=True)
  _write(os.path.join(folder, f'{name}.pem'), identity.certificate, 0o644)
  _write(os.path.join(folder, f'{name}.key'), identity.private_key, 0o600)


def write_study_certificates(
  folder: str,
  sites: Mapping[str, Sequence[str]],
  *,
  study: str = 'tff_brats study',
  days: int = 365,
) -> dict[str, str]:
  """Writes a study's CA, one server certificate per site and a client's.

  Args:
    folder: Output folder (created; existing files of the same names are
      replaced).
    sites: Site name -> the DNS names and IP addresses the coordinator
      dials it by.
    study: The CA's common name.
    days: Validity of every certificate.

  Returns:
    Name -> certificate path, for 'ca', 'coordinator' and every site.

  Raises:
    ValueError: No sites, a site without hosts, or a site named like the CA
      or the coordinator.
  """
  if not sites:
    raise ValueError('sites must name at least one site. Found none.')
  for name in sites:
    if (
      name in (CA_NAME, COORDINATOR_NAME)
      or not name.replace('_', '').replace('-', '').isalnum()
    ):
      raise ValueError(
        'site names must be letters, digits, - and _, and not '
        f'{CA_NAME!r} or {COORDINATOR_NAME!r}. Found {name!r}.'
      )
  ca = make_ca(study, days)
  write_identity(ca, folder, CA_NAME)
  paths = {CA_NAME: os.path.join(folder, f'{CA_NAME}.pem')}
  for name, hosts in sites.items():
    write_identity(issue(ca, name, hosts=hosts, days=days), folder, name)
    paths[name] = os.path.join(folder, f'{name}.pem')
  coordinator = issue(ca, COORDINATOR_NAME, client=True, days=days)
  write_identity(coordinator, folder, COORDINATOR_NAME)
  paths[COORDINATOR_NAME] = os.path.join(folder, f'{COORDINATOR_NAME}.pem')
  return paths


def _write(path: str, data: bytes, mode: int) -> None:
  with atomic.staged_file(path) as staged:
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(staged, mode)  # whatever the umask


def _builder(subject, issuer, public_key, days):
  now = datetime.datetime.now(datetime.UTC)
  return (
    x509.CertificateBuilder()
    .subject_name(subject)
    .issuer_name(issuer)
    .public_key(public_key)
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(hours=1))
    .not_valid_after(now + datetime.timedelta(days=days))
  )


def _general_name(host: str) -> x509.GeneralName:
  try:
    return x509.IPAddress(ipaddress.ip_address(host))
  except ValueError:
    return x509.DNSName(host)


def _certificate_pem(certificate: x509.Certificate) -> bytes:
  return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
  return key.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
  )
