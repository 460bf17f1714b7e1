r"""Reports what a planned private federated run spends, per institution.

Examples:

  # SVT on SegResNet-16, 13 institutions, 3 per round, 100 rounds:
  python -m experiments.compute_privacy --privacy_mechanism=sparse_vector \
    --init_filters=16 --shared_fraction=0.1 --clip_bound=1e-4 \
    --selection_epsilon=0.1 --release_epsilon=0.1 --total_rounds=100 \
    --clients_per_round=3 --num_clients=13 --delta=1e-5

  # The release budget that meets ε = 10 at δ = 1e-5 over 100 rounds:
  python -m experiments.compute_privacy --selection_epsilon=0.05 \
    --target_epsilon=10 --solve_for=release_epsilon --total_rounds=100

  # TFF's Gaussian DP-FedAvg: the noise multiplier for ε = 5 over 50 rounds:
  python -m experiments.compute_privacy --privacy_mechanism=gaussian \
    --target_epsilon=5 --solve_for=noise_multiplier --total_rounds=50

  # Patient-level DP-SGD: the noise multiplier for ε = 8 per patient over
  # 20 rounds of 8 steps, each case in a step's lot with probability 1/4:
  python -m experiments.compute_privacy --privacy_mechanism=dp_sgd \
    --target_epsilon=8 --solve_for=noise_multiplier --total_rounds=20 \
    --sampling_probability=0.25 --local_steps=8

Prints the per-round guarantee, the mechanism's internals and the total ε
per institution (or per patient, for dp_sgd) at δ (summed, RDP and tight; worst case and expected
participation), and what the guarantee does not cover. The mechanism's
parameters are the flags named like its fields (`--shared_fraction`,
`--clip_bound`, `--selection_epsilon`, `--release_epsilon`, `--threshold`;
`--noise_multiplier`, `--l2_norm_clip`, `--sampling_probability`,
`--local_steps`). See
`tff_brats.mechanisms.privacy_report.run_compute_privacy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.mechanisms import privacy_report

_NUM_VALUES = flags.DEFINE_integer(
  'num_values',
  None,
  'N, values in the update (default: counted from --init_filters).',
)
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 13, 'Institutions.')
_SOLVE_FOR = flags.DEFINE_enum(
  'solve_for',
  None,
  ['release_epsilon', 'selection_epsilon', 'noise_multiplier'],
  'Inverse mode: the parameter to solve for to meet --target_epsilon.',
)
_OUTPUT_JSON = flags.DEFINE_string(
  'output_json', None, 'Also write the result as JSON (atomically).'
)


# The shared flags this binary reads; --help lists them with its own.
shared_flags.declare_key_flags(
  'init_filters',
  'total_rounds',
  'clients_per_round',
  'target_epsilon',
  'delta',
  *shared_flags.PRIVACY_FLAGS,
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  try:
    result = privacy_report.run_compute_privacy(**kwargs_from_flags())
  except ValueError as e:
    # The message names the flag and the value; a traceback would bury it.
    raise SystemExit(f'compute_privacy: error: {e}') from None
  print(privacy_report.format_report(result))
  if _OUTPUT_JSON.value:
    print(f'JSON: {_OUTPUT_JSON.value}')


def kwargs_from_flags() -> dict[str, Any]:
  """The keyword arguments of `privacy_report.run_compute_privacy`.

  Raises:
    ValueError: `--num_values` and `--init_filters` are both given (N is
      one or the other).
  """
  num_values = _NUM_VALUES.value
  init_filters = shared_flags.INIT_FILTERS.value
  if num_values is not None and flags.FLAGS['init_filters'].present:
    raise ValueError(
      'num_values and init_filters must not both be given. Found '
      f'num_values={num_values}, init_filters={init_filters}.'
    )
  return dict(
    privacy_mechanism=shared_flags.PRIVACY_MECHANISM.value,
    parameters=shared_flags.privacy_parameters(),
    num_values=num_values,
    init_filters=None if num_values is not None else init_filters,
    total_rounds=shared_flags.TOTAL_ROUNDS.value,
    clients_per_round=shared_flags.CLIENTS_PER_ROUND.value,
    num_clients=_NUM_CLIENTS.value,
    delta=shared_flags.DELTA.value,
    target_epsilon=shared_flags.TARGET_EPSILON.value,
    solve_for=_SOLVE_FOR.value,
    output_json=_OUTPUT_JSON.value,
  )


def run_main() -> None:
  """Console entry point."""
  console.run(main)


if __name__ == '__main__':
  console.run(main)
