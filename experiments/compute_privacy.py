"""Reports what a planned private federated run spends, per institution.

Examples:

  # SVT on SegResNet-16, 13 institutions, 3 per round, 100 rounds:
  python -m experiments.compute_privacy --mechanism=sparse_vector \
    --init_filters=16 --shared_fraction=0.1 --clip_bound=1e-4 \
    --selection_epsilon=0.1 --release_epsilon=0.1 --total_rounds=100 \
    --clients_per_round=3 --num_clients=13 --delta=1e-5

  # The release budget that meets ε = 10 at δ = 1e-5 over 100 rounds:
  python -m experiments.compute_privacy --selection_epsilon=0.05 \
    --target_epsilon=10 --solve_for=release_epsilon --total_rounds=100

  # TFF's Gaussian DP-FedAvg: the noise multiplier for ε = 5 over 50 rounds:
  python -m experiments.compute_privacy --mechanism=gaussian \
    --target_epsilon=5 --solve_for=noise_multiplier --total_rounds=50

Prints the per-round guarantee, the SVT internals and the total ε per
institution at δ (summed and tight; worst case and expected participation).
See `tff_brats.privacy.privacy_report.run_compute_privacy`.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import flags

from tff_brats.privacy import privacy_report

_MECHANISM = flags.DEFINE_enum(
  'mechanism',
  'sparse_vector',
  list(privacy_report.MECHANISMS),
  'Client-side mechanism (or TFF Gaussian DP-FedAvg).',
)
_SHARED_FRACTION = flags.DEFINE_float(
  'shared_fraction', 0.1, 'Fraction q of the values a client releases.'
)
_CLIP_BOUND = flags.DEFINE_float(
  'clip_bound', None, 'SVT: per-value clip γ. Gaussian: L2 clip (echoed).'
)
_SELECTION_EPSILON = flags.DEFINE_float(
  'selection_epsilon', None, 'SVT selection budget ε (threshold + queries).'
)
_RELEASE_EPSILON = flags.DEFINE_float(
  'release_epsilon', None, 'SVT release budget ε3.'
)
_THRESHOLD = flags.DEFINE_float(
  'threshold', None, 'SVT threshold τ (echoed; it does not enter ε).'
)
_NUM_VALUES = flags.DEFINE_integer(
  'num_values', None, 'N, values in the update (or --init_filters).'
)
_INIT_FILTERS = flags.DEFINE_integer(
  'init_filters', None, "N = SegResNet(init_filters)'s trainable parameters."
)
_TOTAL_ROUNDS = flags.DEFINE_integer('total_rounds', 100, 'Rounds R.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer(
  'clients_per_round', None, 'Institutions per round (default: all).'
)
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 13, 'Institutions.')
_DELTA = flags.DEFINE_float('delta', 1e-5, 'δ of the reported ε.')
_NOISE_MULTIPLIER = flags.DEFINE_float(
  'noise_multiplier', None, 'Gaussian noise multiplier z (stddev / clip).'
)
_TARGET_EPSILON = flags.DEFINE_float(
  'target_epsilon', None, 'Inverse mode: total ε to meet at δ (worst case).'
)
_SOLVE_FOR = flags.DEFINE_enum(
  'solve_for',
  None,
  list(privacy_report.SOLVE_FOR),
  'Inverse mode: the parameter to solve for.',
)
_OUTPUT_JSON = flags.DEFINE_string(
  'output_json', None, 'Also write the result as JSON (atomically).'
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  try:
    result = privacy_report.run_compute_privacy(
      mechanism=_MECHANISM.value,
      shared_fraction=_SHARED_FRACTION.value,
      clip_bound=_CLIP_BOUND.value,
      selection_epsilon=_SELECTION_EPSILON.value,
      release_epsilon=_RELEASE_EPSILON.value,
      threshold=_THRESHOLD.value,
      num_values=_NUM_VALUES.value,
      init_filters=_INIT_FILTERS.value,
      total_rounds=_TOTAL_ROUNDS.value,
      clients_per_round=_CLIENTS_PER_ROUND.value,
      num_clients=_NUM_CLIENTS.value,
      delta=_DELTA.value,
      noise_multiplier=_NOISE_MULTIPLIER.value,
      target_epsilon=_TARGET_EPSILON.value,
      solve_for=_SOLVE_FOR.value,
      output_json=_OUTPUT_JSON.value,
    )
  except ValueError as e:
    # The message names the flag and the value; a traceback would bury it.
    raise SystemExit(f'compute_privacy: error: {e}') from None
  print(privacy_report.format_report(result))
  if _OUTPUT_JSON.value:
    print(f'JSON: {_OUTPUT_JSON.value}')


def run_main() -> None:
  """Console entry point."""
  app.run(main)


if __name__ == '__main__':
  app.run(main)
