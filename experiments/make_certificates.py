r"""Makes a federated study's TLS certificates: a CA, the sites', the coordinator's.

Writes into `--output_dir`:

* `ca.pem`: the study CA (copy to every site and to the coordinator);
* `ca.key`: its private key (keep it offline; needed only to issue more);
* `<site>.pem` and `<site>.key`: each site's server certificate, valid for
  the names and addresses the coordinator dials (copy to that site only);
* `coordinator.pem` and `coordinator.key`: the coordinator's client
  certificate (keep on the coordinator only).

Private keys are mode 0600. Hospitals with their own PKI can use its
certificates instead: `run_site.py` and `train_federated.py` read PEM
files.

Example (two sites, as in the README's two-site example on one machine):

  python -m experiments.make_certificates --output_dir=study \
    --sites=site_a=localhost+127.0.0.1,site_b=localhost+127.0.0.1
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import flags

from experiments import console
from tff_brats.runtime import certificates

_OUTPUT_DIR = flags.DEFINE_string(
  'output_dir', None, 'Folder for the PEM files (created).'
)
_SITES = flags.DEFINE_list(
  'sites',
  None,
  'NAME=HOST+HOST,...: each site and the DNS names or IP addresses the '
  'coordinator dials it by.',
)
_DAYS = flags.DEFINE_integer('days', 365, 'Validity of the certificates.')
_STUDY = flags.DEFINE_string('study', 'tff_brats study', "The CA's name.")


def parse_sites(entries: Sequence[str]) -> dict[str, list[str]]:
  """{'site_a': ['localhost', '127.0.0.1']} from 'site_a=localhost+127.0.0.1'.

  Raises:
    ValueError: An entry without '=' or without hosts, or a repeated name.
  """
  sites: dict[str, list[str]] = {}
  for entry in entries:
    name, sep, hosts = entry.partition('=')
    host_list = [h for h in hosts.split('+') if h]
    if not sep or not name or not host_list:
      raise ValueError(
        f'sites entries must be NAME=HOST[+HOST...]. Found {entry!r}.'
      )
    if name in sites:
      raise ValueError(f'sites must name each site once. Found {name!r} twice.')
    sites[name] = host_list
  return sites


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  if _OUTPUT_DIR.value is None or not _SITES.value:
    raise app.UsageError('make_certificates needs --output_dir and --sites.')
  try:
    paths = certificates.write_study_certificates(
      _OUTPUT_DIR.value,
      parse_sites(_SITES.value),
      study=_STUDY.value,
      days=_DAYS.value,
    )
  except ValueError as e:
    raise SystemExit(f'make_certificates: error: {e}') from None
  for name, path in paths.items():
    print(f'{name}: {path}')


def run_main() -> None:
  console.run(main)


if __name__ == '__main__':
  run_main()
