"""Planning a private federated run: participation, totals and budgets.

Forward: how many rounds an institution joins, and what it spends over them
(`accounting.compose_epsilon`) given the guarantee of one round (a
`PrivacyRecord`, which a mechanism of `tff_brats.mechanisms` states; the
sparse vector technique's budget split and noise scales are in `budget`).

Inverse: the per-round budget that meets a target ε at δ over the rounds an
institution joins (bisection on the tight PLD composition), split as a
release budget given the selection budget or the other way round; and for
the Gaussian mechanism the noise multiplier (dp_accounting's
`calibrate_dp_mechanism` with the RDP accountant, as tensorflow_privacy's
`compute_noise_from_budget_lib.compute_noise` does).

Participation: with `clients_per_round` of `num_clients` institutions picked
per round, an institution joins k ~ Binomial(R, p) of R rounds, p =
clients_per_round / num_clients. No privacy-amplification-by-sampling claim
is made (the coordinator knows who took part), so an institution that joins
k rounds spends the k-fold composition; the guarantee is the worst case
k = R. The expected k = pR is reported for orientation only.
"""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
from scipy import optimize

from tff_brats.privacy import accounting
from tff_brats.privacy import events
from tff_brats.utils import checks

# Bisection tolerance on the per-round ε, relative.
_SOLVE_RTOL = 1e-10


@dataclasses.dataclass(frozen=True)
class Participation:
  """How many rounds an institution joins.

  Attributes:
    total_rounds: R.
    clients_per_round: Institutions picked per round.
    num_clients: Institutions in total.
    fraction: p = clients_per_round / num_clients.
    worst_case_rounds: R: an institution may be picked every round; the
      guarantee is for this.
    expected_rounds: pR, the mean of Binomial(R, p); not a bound.
    expected_rounds_ceil: ⌈pR⌉, the whole number of rounds the expected view
      composes.
  """

  total_rounds: int
  clients_per_round: int
  num_clients: int
  fraction: float
  worst_case_rounds: int
  expected_rounds: float
  expected_rounds_ceil: int


def participation(
  total_rounds: int, clients_per_round: int, num_clients: int
) -> Participation:
  """Rounds an institution joins (see the module docstring).

  Raises:
    ValueError: Non-positive counts, or more clients per round than clients.
  """
  checks.check_positive_int('total_rounds', total_rounds)
  checks.check_positive_int('num_clients', num_clients)
  checks.check_positive_int('clients_per_round', clients_per_round)
  if clients_per_round > num_clients:
    raise ValueError(
      f'clients_per_round must be at most num_clients={num_clients}. '
      f'Found {clients_per_round!r}.'
    )
  fraction = clients_per_round / num_clients
  expected = fraction * total_rounds
  return Participation(
    total_rounds=int(total_rounds),
    clients_per_round=int(clients_per_round),
    num_clients=int(num_clients),
    fraction=fraction,
    worst_case_rounds=int(total_rounds),
    expected_rounds=expected,
    expected_rounds_ceil=math.ceil(round(expected, 9)),
  )


def total_epsilon(
  record: accounting.PrivacyRecord,
  num_rounds: int,
  *,
  delta: float,
  method: str = 'pld',
) -> float:
  """ε at `delta` of an institution that joins `num_rounds` such rounds."""
  checks.check_non_negative_int('num_rounds', num_rounds)
  return accounting.compose_epsilon(
    [(record, num_rounds)], delta=delta, method=method
  )


def solve_round_epsilon(
  target_epsilon: float,
  *,
  delta: float,
  num_rounds: int,
  method: str = 'pld',
) -> float:
  """The largest per-round pure ε that meets a target over k rounds.

  The `num_rounds`-fold composition of the returned ε meets
  `target_epsilon` at `delta`. 'sum' (or δ = 0) gives target / k. 'pld' and 'rdp' bisect (Brent's
  method) on the composed ε, which increases continuously with the
  per-round ε, then step down until the result meets the target.

  Raises:
    ValueError: Bad arguments.
  """
  checks.check_positive_number('target_epsilon', target_epsilon)
  checks.check_positive_int('num_rounds', num_rounds)
  accounting.check_delta(delta)
  accounting.check_method(method)
  if method == 'sum' or delta == 0:
    return target_epsilon / num_rounds

  def spent(per_round):
    record = accounting.PrivacyRecord(
      'pure', events.EpsilonDeltaDpEvent(per_round)
    )
    return total_epsilon(record, num_rounds, delta=delta, method=method)

  low, high = 0.0, target_epsilon
  while spent(high) <= target_epsilon:
    low, high = high, 2 * high
  root = optimize.brentq(
    lambda x: spent(x) - target_epsilon,
    low,
    high,
    xtol=_SOLVE_RTOL * high,
    rtol=_SOLVE_RTOL,
  )
  while accounting.exceeds(spent(root), target_epsilon):
    root *= 1 - _SOLVE_RTOL * 10
  return root


def solve_release_epsilon(
  *,
  selection_epsilon: float,
  target_epsilon: float,
  delta: float,
  num_rounds: int,
  method: str = 'pld',
) -> float:
  """The largest ε3 meeting the target with the given selection ε.

  Raises:
    ValueError: Bad arguments, or the selection budget alone spends the
      target over `num_rounds` rounds.
  """
  checks.check_positive_number('selection_epsilon', selection_epsilon)
  per_round = solve_round_epsilon(
    target_epsilon, delta=delta, num_rounds=num_rounds, method=method
  )
  if per_round <= selection_epsilon:
    raise ValueError(
      f'selection_epsilon must be below {per_round:.6g}, the per-round ε '
      f'that meets target_epsilon={target_epsilon} at delta={delta} over '
      f'{num_rounds} rounds. Found {selection_epsilon!r}.'
    )
  return per_round - selection_epsilon


def solve_selection_epsilon(
  *,
  release_epsilon: float,
  target_epsilon: float,
  delta: float,
  num_rounds: int,
  method: str = 'pld',
) -> float:
  """The largest selection ε meeting the target with the given ε3.

  Raises:
    ValueError: Bad arguments, or the release budget alone spends the target
      over `num_rounds` rounds.
  """
  checks.check_positive_number('release_epsilon', release_epsilon)
  per_round = solve_round_epsilon(
    target_epsilon, delta=delta, num_rounds=num_rounds, method=method
  )
  if per_round <= release_epsilon:
    raise ValueError(
      f'release_epsilon must be below {per_round:.6g}, the per-round ε '
      f'that meets target_epsilon={target_epsilon} at delta={delta} over '
      f'{num_rounds} rounds. Found {release_epsilon!r}.'
    )
  return per_round - release_epsilon


def check_sampling_probability(sampling_probability: float) -> None:
  """Raises ValueError unless q is a number in (0, 1]."""
  if not checks.is_number(sampling_probability) or not (
    0 < sampling_probability <= 1
  ):
    raise ValueError(
      f'sampling_probability must be in (0, 1]. Found {sampling_probability!r}.'
    )


def gaussian_step_event(
  noise_multiplier: float, sampling_probability: float = 1.0
) -> dp_accounting.DpEvent:
  """A Gaussian step, Poisson-sampled with q < 1 (q = 1: plain Gaussian)."""
  gaussian = dp_accounting.GaussianDpEvent(float(noise_multiplier))
  if sampling_probability == 1:
    return gaussian
  return dp_accounting.PoissonSampledDpEvent(
    float(sampling_probability), gaussian
  )


def solve_noise_multiplier(
  *,
  target_epsilon: float,
  delta: float,
  num_rounds: int,
  method: str = 'rdp',
  sampling_probability: float = 1.0,
  steps_per_round: int = 1,
) -> float:
  """The smallest Gaussian noise multiplier that meets a target ε.

  For `num_rounds` rounds of `steps_per_round` Gaussian steps at `delta`,
  each step Poisson-sampled with `sampling_probability` (1: unsampled, the
  Gaussian DP-FedAvg round; below 1: a DP-SGD step). As tensorflow_privacy
  0.9's `compute_noise`: dp_accounting's `calibrate_dp_mechanism` (Brent's
  method) on a fresh accountant per candidate; the result meets the target
  and is within a relative 1e-6 of the smallest z that does.

  Args:
    target_epsilon: ε > 0.
    delta: δ in (0, 1).
    num_rounds: Rounds the institution joins.
    method: 'rdp' (`RdpAccountant`, default) or 'pld' (`PLDAccountant`).
    sampling_probability: q in (0, 1] of every step.
    steps_per_round: Steps per round (>= 1).

  Raises:
    ValueError: Bad arguments.
  """
  checks.check_positive_number('target_epsilon', target_epsilon)
  checks.check_positive_int('num_rounds', num_rounds)
  checks.check_positive_int('steps_per_round', steps_per_round)
  check_sampling_probability(sampling_probability)
  if not checks.is_number(delta) or not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1). Found {delta!r}.')
  accountants = {
    'rdp': dp_accounting.rdp.RdpAccountant,
    'pld': dp_accounting.pld.PLDAccountant,
  }
  if method not in accountants:
    raise ValueError(f'method must be one of rdp, pld. Found {method!r}.')

  def event(z):
    return dp_accounting.SelfComposedDpEvent(
      gaussian_step_event(z, sampling_probability),
      num_rounds * steps_per_round,
    )

  def spent(z):
    return accountants[method]().compose(event(z)).get_epsilon(delta)

  # Bracket [low, high] with spent(low) > target >= spent(high). RDP is
  # cheap to evaluate: start at 1 and double or halve. A Gaussian PLD costs
  # more the smaller the noise, so the PLD search starts from the RDP
  # answer, which meets the target (RDP bounds ε from above) and is close.
  if method == 'rdp':
    factor, high = 2.0, 1.0
  else:
    factor = 1.25
    high = solve_noise_multiplier(
      target_epsilon=target_epsilon,
      delta=delta,
      num_rounds=num_rounds,
      sampling_probability=sampling_probability,
      steps_per_round=steps_per_round,
    )
  while spent(high) > target_epsilon:
    high *= factor
  low = high / factor
  while spent(low) <= target_epsilon:
    low, high = low / factor, low
  return float(
    dp_accounting.calibrate_dp_mechanism(
      accountants[method],
      event,
      target_epsilon,
      delta,
      dp_accounting.ExplicitBracketInterval(low, high),
      tol=1e-6 * low,
    )
  )
