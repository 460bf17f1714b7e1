r"""Federated training with privacy across the institutions of a prepared folder.

Example (the demo's synthetic data, 4 institutions, SVT):

  python -m experiments.train_federated \
    --data_dir=demo_output/prepared --root_output_dir=/tmp/runs \
    --experiment_name=svt --total_rounds=20 --crop_size=48,48,48 \
    --privacy_mechanism=sparse_vector --shared_fraction=0.1 \
    --clip_bound=1e-3 --selection_epsilon=1e5 --release_epsilon=1e5 \
    --threshold=5e-4

Outputs go to `<root_output_dir>/<experiment_name>/` (see
`tff_brats.training.federated`); `--resume` continues an interrupted run,
`--target_epsilon` stops before a round that would take any institution
past a budget. The mechanism's parameters are the flags named like its
fields (`tff_brats.mechanisms`; `experiments/shared_flags.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
from typing import Any

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.learning import fed_avg
from tff_brats.runtime import devices
from tff_brats.runtime import local
from tff_brats.runtime import sites
from tff_brats.training import federated

_CLIENT_EPOCHS_PER_ROUND = flags.DEFINE_integer(
  'client_epochs_per_round', 1, 'Local passes over a client’s cases.'
)
_CLIENT_LEARNING_RATE = flags.DEFINE_float(
  'client_learning_rate', 1e-3, 'Client Adam step size.'
)
_SERVER_OPTIMIZER = flags.DEFINE_enum(
  'server_optimizer', 'sgd', list(fed_avg.SERVER_OPTIMIZERS), 'Server step.'
)
_SERVER_LEARNING_RATE = flags.DEFINE_float(
  'server_learning_rate', 1.0, 'Server step size (1 with sgd: FedAvg).'
)
_NOISE_SEED = flags.DEFINE_integer(
  'noise_seed',
  None,
  'Reproducible privacy noise (experiments only: voids the guarantee; the '
  'ledger records every round as "no guarantee (fixed noise seed)").',
)
_DIAGNOSTICS = flags.DEFINE_bool(
  'diagnostics', False, 'Record clipped fractions (leaks; simulations only).'
)
_REPORT_TRAINING_STATISTICS = flags.DEFINE_bool(
  'report_training_statistics',
  False,
  'Clients also send their training loss and Dice counts for metrics.csv '
  '(not privatised: simulations only).',
)
_TRAINABLE_LAYERS = flags.DEFINE_list(
  'trainable_layers',
  None,
  'Train and share only these SegResNet parts (init_conv, down0..., up0..., '
  'head; e.g. up0,up1,up2,head); the others stay at the initial model. '
  'Default: every part.',
)
_ROUNDS_PER_EVAL = flags.DEFINE_integer(
  'rounds_per_eval', 5, 'Validate every this many rounds.'
)
_ROUNDS_PER_CHECKPOINT = flags.DEFINE_integer(
  'rounds_per_checkpoint', 1, 'Checkpoint every this many rounds.'
)
_EVAL_PER_INSTITUTION = flags.DEFINE_bool(
  'eval_per_institution', False, 'Also score each institution’s own cases.'
)
_MAX_INSTITUTION_EVAL_CASES = flags.DEFINE_integer(
  'max_institution_eval_cases', 4, 'Cases per institution to score.'
)
_WORKER_ISOLATION = flags.DEFINE_enum(
  'worker_isolation',
  'namespace',
  ['namespace', 'none'],
  "Where TFF's local C++ worker listens. 'namespace': in a private network "
  'namespace that no other host can reach, through a Unix socket only this '
  "user can open (Linux; needs user namespaces). 'none': on every network "
  'interface without TLS or authentication, as TFF itself does: anyone who '
  'can reach the port can run TensorFlow operations as you.',
)
_RUNTIME = flags.DEFINE_enum(
  'runtime',
  'auto',
  list(devices.RUNTIMES),
  "Where clients train. 'worker': inside TFF's C++ worker (CPU only: its "
  "pip build has no CUDA). 'in_process': in this process with plain "
  'TensorFlow, one client per GPU at a time (the CPU when there is no GPU), '
  "then the same TFF aggregation and privacy. 'auto': in_process when a GPU "
  'is visible, else worker. A run can resume on the other runtime.',
)
_SITES = flags.DEFINE_list(
  'sites',
  None,
  "NAME=HOST:PORT,...: the sites that hold the institutions' data, each "
  'running experiments/run_site.py. Clients then train on their own site; '
  '--data_dir holds the validation cases. See "Running across hospitals".',
)
_TLS_CA = flags.DEFINE_string(
  'tls_ca', None, "The study CA (PEM) that signed the sites' certificates."
)
_TLS_CERTIFICATE = flags.DEFINE_string(
  'tls_certificate',
  None,
  "The coordinator's client certificate (PEM), for mutual TLS.",
)
_TLS_PRIVATE_KEY = flags.DEFINE_string(
  'tls_private_key', None, "The coordinator's private key (PEM)."
)
_ALLOW_PLAINTEXT_SITES = flags.DEFINE_bool(
  'allow_plaintext_sites',
  False,
  'Reach sites on other hosts without TLS. Anyone on the network path can '
  'then read the model and the privatised updates, and anyone who can '
  'reach a site can run TensorFlow operations there: only on a network you '
  'fully trust.',
)
_SITE_TIMEOUT = flags.DEFINE_float(
  'site_timeout',
  3600.0,
  'Seconds a site may take for its part of a round before the run stops '
  'with an error naming it (resume with --resume).',
)
_SITE_CONNECT_TIMEOUT = flags.DEFINE_float(
  'site_connect_timeout', 60.0, 'Seconds a site may take to answer at start.'
)

# The shared flags this binary reads; --help lists them with its own.
shared_flags.declare_key_flags(
  *shared_flags.RUN_FLAGS,
  *shared_flags.TRAINER_FLAGS,
  'total_rounds',
  'clients_per_round',
  'target_epsilon',
  'delta',
  *shared_flags.PRIVACY_FLAGS,
)


def config_from_flags() -> federated.FederatedConfig:
  """The run's configuration from the flags (library code takes no flags).

  Raises:
    ValueError: A flag value is invalid (the message names it).
  """
  return federated.FederatedConfig(
    mechanism=shared_flags.privacy_mechanism(),
    total_rounds=shared_flags.TOTAL_ROUNDS.value,
    clients_per_round=shared_flags.CLIENTS_PER_ROUND.value,
    client_epochs_per_round=_CLIENT_EPOCHS_PER_ROUND.value,
    client_learning_rate=_CLIENT_LEARNING_RATE.value,
    server_optimizer=_SERVER_OPTIMIZER.value,
    server_learning_rate=_SERVER_LEARNING_RATE.value,
    target_epsilon=shared_flags.TARGET_EPSILON.value,
    delta=shared_flags.DELTA.value,
    rounds_per_eval=_ROUNDS_PER_EVAL.value,
    rounds_per_checkpoint=_ROUNDS_PER_CHECKPOINT.value,
    eval_per_institution=_EVAL_PER_INSTITUTION.value,
    max_institution_eval_cases=_MAX_INSTITUTION_EVAL_CASES.value,
    noise_seed=_NOISE_SEED.value,
    diagnostics=_DIAGNOSTICS.value,
    report_training_statistics=_REPORT_TRAINING_STATISTICS.value,
    trainable_layers=None
    if _TRAINABLE_LAYERS.value is None
    else tuple(_TRAINABLE_LAYERS.value),
    **shared_flags.trainer_kwargs(),
  )


def site_kwargs() -> dict[str, Any]:
  """`train_federated`'s site arguments from the flags.

  Raises:
    ValueError: Malformed --sites, or TLS files given without --tls_ca.
  """
  if not _SITES.value:
    return {}
  tls = None
  if _TLS_CA.value is not None:
    tls = sites.TlsOptions(
      _TLS_CA.value, _TLS_CERTIFICATE.value, _TLS_PRIVATE_KEY.value
    )
  elif _TLS_CERTIFICATE.value or _TLS_PRIVATE_KEY.value:
    raise ValueError(
      'tls_ca must be given with tls_certificate and tls_private_key (the '
      'CA that signed the sites). Found none.'
    )
  return dict(
    sites=sites.parse_sites(_SITES.value),
    tls=tls,
    allow_plaintext_sites=_ALLOW_PLAINTEXT_SITES.value,
    site_timeout=_SITE_TIMEOUT.value,
    site_connect_timeout=_SITE_CONNECT_TIMEOUT.value,
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  shared_flags.require('data_dir', 'root_output_dir')
  run_dir = os.path.join(
    shared_flags.ROOT_OUTPUT_DIR.value,
    shared_flags.EXPERIMENT_NAME.value or 'federated',
  )
  try:
    summary = federated.train_federated(
      config_from_flags(),
      run_dir,
      resume=shared_flags.RESUME.value,
      progress=shared_flags.PROGRESS.value,
      worker_isolation=_WORKER_ISOLATION.value,
      runtime=_RUNTIME.value,
      **site_kwargs(),
    )
  except (
    ValueError,
    sites.SiteError,
    local.WorkerError,
    federated.RunStorageError,
  ) as e:  # the message says which
    raise SystemExit(f'train_federated: error: {e}') from None
  _print_summary(summary, run_dir)


def _print_summary(summary: dict[str, Any], run_dir: str) -> None:
  print(json.dumps(summary, indent=1, sort_keys=True))
  with open(summary['privacy_ledger']) as f:
    print(f.read())
  if summary['stopped']:
    print(summary['stopped'])
  print(f'Run folder: {run_dir}')


def run_main() -> None:
  """Console entry point."""
  console.run(main)


if __name__ == '__main__':
  console.run(main)
