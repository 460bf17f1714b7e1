"""Planning a private federated run: per-round ε, totals and budgets.

Forward: the internals and per-round ε of the sparse vector technique (SVT;
Lyu, Su & Li 2017, "Understanding the Sparse Vector Technique for
Differential Privacy", PVLDB 10(6)) as `tff_brats` runs it (DESIGN,
"Privacy", step 5), how many rounds an institution joins, and what it spends
over them (`accounting.compose_epsilon`).

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
import fractions
import math

import dp_accounting
from scipy import optimize

from tff_brats.privacy import accounting
from tff_brats.utils import checks

# Bisection tolerance on the per-round ε, relative.
_SOLVE_RTOL = 1e-10


@dataclasses.dataclass(frozen=True)
class SparseVectorParameters:
  """The internals of one SVT round for one client.

  Attributes:
    num_values: N, the values of the model update.
    shared_fraction: q, the fraction of values released.
    clip_bound: γ, every value is clipped to [−γ, γ].
    selection_epsilon: ε, the budget of selecting the values.
    release_epsilon: ε3, the budget of releasing them.
    num_shared: c = ⌈qN⌉, how many values are released.
    threshold_epsilon: ε1 = ε / (1 + (2c)^(2/3)), the threshold's share.
    query_epsilon: ε2 = ε − ε1, the queries' share.
    threshold_scale: γ / ε1, Laplace scale of the threshold noise ρ.
    query_scale: 2cγ / ε2, Laplace scale of each query's noise.
    release_scale: 2cγ / ε3, Laplace scale of each released value's noise.
    epsilon_per_round: ε + ε3 (the round is (ε + ε3, 0)-DP).
  """

  num_values: int
  shared_fraction: float
  clip_bound: float
  selection_epsilon: float
  release_epsilon: float
  num_shared: int
  threshold_epsilon: float
  query_epsilon: float
  threshold_scale: float
  query_scale: float
  release_scale: float
  epsilon_per_round: float


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


def num_shared(shared_fraction: float, num_values: int) -> int:
  """c = ⌈qN⌉, with q read as its shortest decimal (exact arithmetic).

  The rule of `tff_brats.privacy.mechanisms.shared_count` (repeated here so
  that planning needs no TensorFlow): 0.1 × 30 is 3, not 4, although the
  binary value of 0.1 is slightly above 1/10. Always in [1, N].
  """
  _check_fraction(shared_fraction)
  checks.check_positive_int('num_values', num_values)
  exact = fractions.Fraction(repr(float(shared_fraction))) * int(num_values)
  return max(1, min(int(num_values), math.ceil(exact)))


def sparse_vector_parameters(
  *,
  shared_fraction: float,
  num_values: int,
  clip_bound: float,
  selection_epsilon: float,
  release_epsilon: float,
) -> SparseVectorParameters:
  """The SVT internals (Lyu, Su & Li 2017; DESIGN.md, "Privacy", step 5).

  ε1 : ε2 = 1 : (2c)^(2/3) is the budget split that Lyu et al. derive for
  c answers to non-monotonic queries; the same formulas as
  `tff_brats.privacy.sparse_vector.noise_scales`.

  Args:
    shared_fraction: q in (0, 1].
    num_values: N >= 1.
    clip_bound: γ > 0.
    selection_epsilon: ε > 0.
    release_epsilon: ε3 > 0.

  Raises:
    ValueError: An argument out of range, naming it.
  """
  c = num_shared(shared_fraction, num_values)
  _check_positive('clip_bound', clip_bound)
  epsilon = sparse_vector_epsilon(selection_epsilon, release_epsilon)
  eps1 = selection_epsilon / (1 + (2 * c) ** (2 / 3))
  eps2 = selection_epsilon - eps1
  return SparseVectorParameters(
    num_values=int(num_values),
    shared_fraction=float(shared_fraction),
    clip_bound=float(clip_bound),
    selection_epsilon=float(selection_epsilon),
    release_epsilon=float(release_epsilon),
    num_shared=c,
    threshold_epsilon=eps1,
    query_epsilon=eps2,
    threshold_scale=clip_bound / eps1,
    query_scale=2 * c * clip_bound / eps2,
    release_scale=2 * c * clip_bound / release_epsilon,
    epsilon_per_round=epsilon,
  )


def sparse_vector_epsilon(
  selection_epsilon: float, release_epsilon: float
) -> float:
  """Per-round ε of SVT: selection_epsilon + release_epsilon (δ = 0)."""
  record = accounting.PrivacyRecord.sparse_vector(
    selection_epsilon, release_epsilon
  )
  return record.epsilon


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
  _check_positive('target_epsilon', target_epsilon)
  checks.check_positive_int('num_rounds', num_rounds)
  accounting.check_delta(delta)
  accounting.check_method(method)
  if method == 'sum' or delta == 0:
    return target_epsilon / num_rounds

  def spent(per_round):
    record = accounting.PrivacyRecord(
      accounting.SPARSE_VECTOR, epsilon=per_round, delta=0.0
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
  _check_positive('selection_epsilon', selection_epsilon)
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
  _check_positive('release_epsilon', release_epsilon)
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


def solve_noise_multiplier(
  *,
  target_epsilon: float,
  delta: float,
  num_rounds: int,
  method: str = 'rdp',
) -> float:
  """The smallest Gaussian noise multiplier that meets a target ε.

  For `num_rounds` unsampled Gaussian rounds at `delta`. As tensorflow_privacy 0.9's `compute_noise`: dp_accounting's
  `calibrate_dp_mechanism` (Brent's method) on a fresh accountant per
  candidate; the result meets the target and is within a relative 1e-6 of
  the smallest z that does.

  Args:
    target_epsilon: ε > 0.
    delta: δ in (0, 1).
    num_rounds: Rounds the institution joins.
    method: 'rdp' (`RdpAccountant`, default) or 'pld' (`PLDAccountant`).

  Raises:
    ValueError: Bad arguments.
  """
  _check_positive('target_epsilon', target_epsilon)
  checks.check_positive_int('num_rounds', num_rounds)
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
      dp_accounting.GaussianDpEvent(z), num_rounds
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
      target_epsilon=target_epsilon, delta=delta, num_rounds=num_rounds
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


def _check_fraction(shared_fraction):
  if not checks.is_number(shared_fraction) or not 0 < shared_fraction <= 1:
    raise ValueError(
      f'shared_fraction must be in (0, 1]. Found {shared_fraction!r}.'
    )


def _check_positive(name, value):
  if not checks.is_number(value) or not 0 < value < math.inf:
    raise ValueError(f'{name} must be a positive number. Found {value!r}.')
