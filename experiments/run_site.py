r"""Runs a site of a federated study: this host's TFF worker, behind TLS.

A site is a hospital's host that holds some institutions' prepared data
(`experiments/prepare_data.py`) and trains their clients when the
coordinator asks. This command:

1. checks the prepared folder and that it holds the institutions named by
   `--institutions` (default: every institution in it);
2. writes a private serving folder in `--worker_log_dir`
   (`sites.write_serving_folder`):
   `site.json`, which lists the institutions it serves and their shard paths
   relative to the folder, and a link to the prepared data;
3. starts TFF's C++ worker in a private network namespace, reachable only
   through a Unix socket of this user (`tff_brats.runtime.isolated_worker`),
   in that folder. The coordinator reads `site.json` and sends those
   relative shard paths, so they resolve here, on the site;
4. listens on `--listen` with TLS (`tff_brats.runtime.tls`). It presents
   `--certificate` and, by default, accepts only clients whose certificate
   `--client_ca` signed (mutual TLS), then relays to the worker;
5. serves until Ctrl-C or SIGTERM, then stops both and removes the serving
   folder. If the worker dies, the site stops with its log's last lines.

Voxels never leave the site. The coordinator's computations read the
shards here; the privacy mechanism runs here on each client's update, and
only the privatised partial sums of the site's clients go back. What the
coordinator can do on a site: see "Running across hospitals" in the README.

Example (site_a holds institutions 1 and 2; the certificates come from
`experiments/make_certificates.py`):

  python -m experiments.run_site --data_dir=/data/prepared \
    --institutions=1,2 --listen=0.0.0.0:8443 \
    --certificate=study/site_a.pem --private_key=study/site_a.key \
    --client_ca=study/ca.pem --worker_log_dir=/var/log/tff_brats
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import shutil
import signal
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import portpicker

from experiments import console
from tff_brats.data import manifest as manifest_lib
from tff_brats.runtime import local
from tff_brats.runtime import sites
from tff_brats.runtime import tls
from tff_brats.runtime import worker as worker_lib

_DATA_DIR = flags.DEFINE_string(
  'data_dir', None, "The site's prepared folder (prepare_data.py output)."
)
_INSTITUTIONS = flags.DEFINE_list(
  'institutions',
  None,
  'Institutions this site serves (default: every one in --data_dir).',
)
_LISTEN = flags.DEFINE_string(
  'listen',
  None,
  'HOST:PORT to accept TLS on, e.g. 0.0.0.0:8443 (every interface) or the '
  'address the coordinator dials.',
)
_CERTIFICATE = flags.DEFINE_string(
  'certificate', None, "The site's TLS certificate (PEM)."
)
_PRIVATE_KEY = flags.DEFINE_string(
  'private_key', None, "The site's private key (PEM)."
)
_CLIENT_CA = flags.DEFINE_string(
  'client_ca',
  None,
  'The study CA (PEM): only clients with a certificate it signed (the '
  "coordinator's) get in.",
)
_CLIENT_AUTHENTICATION = flags.DEFINE_bool(
  'client_authentication',
  True,
  'Require client certificates (mutual TLS). --noclient_authentication '
  'lets anyone who reaches the port run TensorFlow operations here; use it '
  'only behind another authenticating proxy.',
)
_WORKER_LOG_DIR = flags.DEFINE_string(
  'worker_log_dir',
  'site_logs',
  "Folder for the TFF worker's log and, while the site runs, its serving "
  'folder.',
)
_MAX_CONCURRENT_CALLS = flags.DEFINE_integer(
  'worker_max_concurrent_calls',
  -1,
  'Clients the worker trains at once (non-positive: all).',
)
_STARTUP_TIMEOUT = 60.0


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  required = ['data_dir', 'listen', 'certificate', 'private_key']
  if _CLIENT_AUTHENTICATION.value:
    required.append('client_ca')
  missing = [
    f'--{name}' for name in required if flags.FLAGS[name].value is None
  ]
  if missing:
    raise app.UsageError(f'run_site needs {", ".join(missing)}.')
  os.makedirs(_WORKER_LOG_DIR.value, exist_ok=True)
  # Mode 0700; removed on exit (a SIGKILL leaves it in --worker_log_dir).
  serving = tempfile.mkdtemp(prefix='serving-', dir=_WORKER_LOG_DIR.value)
  try:
    prepared = manifest_lib.load(_DATA_DIR.value)
    institutions = _INSTITUTIONS.value or list(prepared.client_ids)
    sites.write_serving_folder(prepared.root, institutions, serving)
    host, port = tls.split_address(_LISTEN.value)
    if not _CLIENT_AUTHENTICATION.value:
      logging.warning(
        '--noclient_authentication: anyone who can reach %s can run '
        'TensorFlow operations on this host.',
        _LISTEN.value,
      )
    client_ca = _CLIENT_CA.value if _CLIENT_AUTHENTICATION.value else None
    # Checks the files before anything starts.
    tls.server_context(_CERTIFICATE.value, _PRIVATE_KEY.value, client_ca)
  except ValueError as e:
    shutil.rmtree(serving, ignore_errors=True)
    raise SystemExit(f'run_site: error: {e}') from None

  def terminator_for(target):
    return tls.TlsTerminator(
      target,
      host=host,
      port=port,
      certificate_file=_CERTIFICATE.value,
      private_key_file=_PRIVATE_KEY.value,
      client_ca_file=client_ca,
    )

  try:
    status = serve(prepared, institutions, serving, terminator_for)
  finally:
    shutil.rmtree(serving, ignore_errors=True)
  sys.exit(status)


def serve(prepared, institutions, serving, terminator_for) -> int:
  """Runs the worker and the terminator until a signal or the worker's end.

  Args:
    prepared: The site's manifest.
    institutions: The institutions it serves.
    serving: The serving folder (`sites.write_serving_folder`): the
      worker's working folder.
    terminator_for: `target -> TlsTerminator` (not started).

  Returns:
    The exit status: 0 after SIGINT/SIGTERM, 1 if the worker died.
  """
  os.makedirs(_WORKER_LOG_DIR.value, exist_ok=True)
  port = portpicker.pick_unused_port()
  worker = worker_lib.WorkerProcess(
    port,
    os.path.join(_WORKER_LOG_DIR.value, f'tff_worker-{port}.log'),
    max_concurrent_computation_calls=_MAX_CONCURRENT_CALLS.value,
    cwd=serving,
  )
  for signum in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, local.exit_on_signal)
  terminator = None
  try:
    worker.start()
    local.wait_for_worker(worker, _STARTUP_TIMEOUT)
    terminator = terminator_for(worker.address)
    terminator.start()
    # One line a deployment script can wait for.
    print(
      f'Site ready: institutions {",".join(institutions)} of '
      f'{prepared.root} on {terminator.host}:{terminator.port} '
      f'(TLS, {"mutual" if terminator.mutual else "server-only"}); worker '
      f'pid {worker.server_pid()}, log {worker.log_path}.',
      flush=True,
    )
    while worker.is_running():
      time.sleep(0.5)
    logging.error(
      'The TFF worker ended (status %s). Last lines of %s:\n%s',
      worker.returncode,
      worker.log_path,
      worker.log_tail(),
    )
    return 1
  except (KeyboardInterrupt, SystemExit) as e:
    logging.info('Stopping the site (%s).', type(e).__name__)
    return 0
  finally:
    if terminator is not None:
      terminator.close()
    worker.stop()


def run_main() -> None:
  console.run(main)


if __name__ == '__main__':
  run_main()
