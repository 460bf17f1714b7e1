"""Tests for tff_brats.privacy.accounting.

Golden values and their provenance:

* Pure ε-DP composed k times: the optimal composition theorem (Kairouz, Oh
  & Viswanath, "The Composition Theorem for Differential Privacy", ICML
  2015, Theorem 3.3 with δ = 0). The k-fold composition of (ε, 0)-DP is
  exactly (ε', δ(ε'))-DP, over all (adaptive) compositions, with

      δ(ε') = (1 + e^ε)^(−k) Σ_{i=0..k} C(k, i)
              max(0, e^{(k−i)ε} − e^{ε'} e^{iε}),

  the hockey-stick divergence of k-fold randomised response; at ε' =
  (k − 2j)ε the sum is the theorem's δ_j = Σ_{ℓ<j} C(k, ℓ)(e^{(k−ℓ)ε} −
  e^{(k−2j+ℓ)ε}) / (1 + e^ε)^k. `_kov_delta` below evaluates it
  independently of dp_accounting (integer binomials, log-space terms,
  `math.fsum`), and `_kov_epsilon` inverts it by bisection. The pinned
  numbers in `_KOV_GOLDEN` are its output at δ = 1e-5.
* Heterogeneous pure rounds: the same hockey-stick divergence of the product
  of randomised responses (Murtagh & Vadhan, "The Complexity of Computing
  the Optimal Composition of Differential Privacy", TCC 2016), evaluated by
  enumerating the (i1, i2) flips of two groups.
* Gaussian rounds: tensorflow_privacy 0.9.0,
  `privacy/analysis/compute_dp_sgd_privacy_test.py`,
  `test_compute_dp_sgd_example_privacy` (noise 0.7, δ = 1e-5, 1.2 epochs
  without microbatching: 2 unsampled Gaussian steps → RDP 10.8602036, PLD
  10.1224946; with Poisson sampling 0.01: 120 sampled steps → RDP
  3.2391922, PLD 2.4612381). Independent check: the exact ε of the
  Gaussian mechanism (Balle & Wang, "Improving the Gaussian Mechanism for
  Differential Privacy", ICML 2018, Theorem 8), k rounds of noise z being
  one Gaussian with μ = √k / z.
* Sanity bounds: basic composition kε (upper); the advanced composition
  theorem (Dwork, Rothblum & Vadhan, "Boosting and Differential Privacy",
  FOCS 2010, Theorem III.3: ε√(2k ln(1/δ)) + kε(e^ε − 1), upper);
  monotonicity in k; the exact one-round value log(e^ε − δ(1 + e^ε)).
"""

import json
import math

import dp_accounting
from dp_accounting.pld import common
from dp_accounting.pld import privacy_loss_distribution
import numpy as np
import pytest
from scipy import special

from tff_brats.privacy import accounting
from tff_brats.privacy import events

# dp_accounting's Gaussian PLDs call scipy 1.9's distributions, which use a
# numpy function deprecated in numpy 1.25; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
  'ignore:np.find_common_type is deprecated:DeprecationWarning'
)

_DELTA = 1e-5
Record = accounting.PrivacyRecord
Ledger = accounting.PrivacyLedger


def _svt(epsilon):
  return Record('sparse_vector', events.EpsilonDeltaDpEvent(epsilon, 0.0))


def _approx(epsilon, delta):
  return Record('sparse_vector', events.EpsilonDeltaDpEvent(epsilon, delta))


def _gauss(event_or_noise_multiplier):
  event = event_or_noise_multiplier
  if not isinstance(event, dp_accounting.DpEvent):
    event = dp_accounting.GaussianDpEvent(event)
  return Record('gaussian', event)


def _none(mechanism='none'):
  return Record(mechanism, dp_accounting.NonPrivateDpEvent())


# ------------------------------------------------- independent references --


def _kov_delta(epsilon, k, eps_prime):
  """δ(ε') of k-fold (ε, 0)-DP (Kairouz, Oh & Viswanath 2015, Thm. 3.3)."""
  log_norm = k * math.log1p(math.exp(epsilon))
  terms = []
  for i in range(k + 1):
    gap = (k - 2 * i) * epsilon - eps_prime
    if gap <= 0:
      break
    terms.append(
      math.exp(
        math.log(math.comb(k, i))
        + (k - i) * epsilon
        - log_norm
        + math.log(-math.expm1(-gap))
      )
    )
  return math.fsum(terms)


def _kov_epsilon(epsilon, k, delta):
  lo, hi = 0.0, k * epsilon
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if _kov_delta(epsilon, k, mid) > delta else (lo, mid)
  return hi


def _two_group_delta(eps_a, k_a, eps_b, k_b, eps_prime):
  """δ(ε') of k_a rounds of ε_a-DP and k_b of ε_b-DP (randomised response)."""
  log_norm = k_a * math.log1p(math.exp(eps_a)) + k_b * math.log1p(
    math.exp(eps_b)
  )
  terms = []
  for i in range(k_a + 1):
    for j in range(k_b + 1):
      loss = (k_a - 2 * i) * eps_a + (k_b - 2 * j) * eps_b
      if loss <= eps_prime:
        continue
      log_p = (
        math.log(math.comb(k_a, i) * math.comb(k_b, j))
        + (k_a - i) * eps_a
        + (k_b - j) * eps_b
        - log_norm
      )
      terms.append(math.exp(log_p + math.log(-math.expm1(eps_prime - loss))))
  return math.fsum(terms)


def _two_group_epsilon(eps_a, k_a, eps_b, k_b, delta):
  lo, hi = 0.0, k_a * eps_a + k_b * eps_b
  for _ in range(200):
    mid = (lo + hi) / 2
    if _two_group_delta(eps_a, k_a, eps_b, k_b, mid) > delta:
      lo = mid
    else:
      hi = mid
  return hi


def _gaussian_epsilon(noise_multiplier, k, delta):
  """Exact ε of k unsampled Gaussian rounds (Balle & Wang 2018, Thm. 8)."""
  mu = math.sqrt(k) / noise_multiplier

  def delta_of(eps):
    return special.ndtr(mu / 2 - eps / mu) - math.exp(eps) * special.ndtr(
      -mu / 2 - eps / mu
    )

  lo, hi = 0.0, 100.0
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
  return hi


# (ε, k) -> ε' at δ = 1e-5 from `_kov_epsilon` (see the module docstring).
_KOV_GOLDEN = {
  (0.1, 1): 0.09998095144439707,
  (0.1, 10): 0.9936911767593359,
  (0.1, 100): 4.306791372516508,
  (1.0, 1): 0.9999863211120328,
  (1.0, 10): 9.999770634534942,
  (1.0, 100): 79.84132236496451,
}


# ----------------------------------------------------- pure composition ----


@pytest.mark.parametrize('epsilon, k', sorted(_KOV_GOLDEN))
def test_reference_reproduces_pinned_golden(epsilon, k):
  assert _kov_epsilon(epsilon, k, _DELTA) == pytest.approx(
    _KOV_GOLDEN[(epsilon, k)], rel=1e-12
  )


@pytest.mark.parametrize('epsilon, k', sorted(_KOV_GOLDEN))
def test_pld_matches_optimal_composition(epsilon, k):
  ledger = Ledger()
  for round_num in range(k):
    ledger.record_round(round_num, ['a'], _svt(epsilon))
  tight = ledger.epsilon('a', delta=_DELTA)
  # One distinct ε puts the losses exactly on the grid (h = ε): no
  # discretisation error, only floating point.
  assert tight == pytest.approx(_KOV_GOLDEN[(epsilon, k)], rel=1e-9)


@pytest.mark.parametrize('epsilon, k', [(0.3, 7), (0.05, 40), (2.0, 5)])
def test_pld_matches_optimal_composition_at_other_points(epsilon, k):
  for delta in (1e-3, 1e-6, 1e-9):
    tight = accounting.compose_epsilon([(_svt(epsilon), k)], delta=delta)
    # dp_accounting moves up to 1e-15 of truncated tail mass to the infinite
    # loss (pessimistic), so the exact δ at the returned ε is up to 1e-15
    # below the target (plus floating-point noise of ~1e-16); at δ = 1e-9
    # that moves ε by a relative ~3e-8.
    assert delta - 2e-15 <= _kov_delta(epsilon, k, tight) <= delta + 1e-15
    assert tight == pytest.approx(_kov_epsilon(epsilon, k, delta), rel=1e-7)


def test_single_round_closed_form():
  # k = 1: δ(ε') = (e^ε − e^ε')/(1 + e^ε), so ε' = log(e^ε − δ(1 + e^ε)),
  # slightly below ε for δ > 0.
  for epsilon in (0.1, 1.0, 3.0):
    expected = math.log(math.exp(epsilon) - _DELTA * (1 + math.exp(epsilon)))
    got = accounting.compose_epsilon([(_svt(epsilon), 1)], delta=_DELTA)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got < epsilon


def test_pld_matches_dp_accounting_directly():
  # dp_accounting's own from_privacy_parameters on the record's grid (h =
  # ε), with δ > 0 per round.
  record = _approx(0.5, 1e-7)
  pld = privacy_loss_distribution.from_privacy_parameters(
    common.DifferentialPrivacyParameters(0.5, 1e-7),
    value_discretization_interval=0.5,
  ).self_compose(20)
  assert accounting.compose_epsilon(
    [(record, 20)], delta=_DELTA
  ) == pytest.approx(pld.get_epsilon_for_delta(_DELTA), rel=1e-12)
  # The generic dp_accounting default (h = 1e-4) agrees within k·h.
  coarse = privacy_loss_distribution.from_privacy_parameters(
    common.DifferentialPrivacyParameters(0.5, 1e-7)
  ).self_compose(20)
  assert (
    abs(
      coarse.get_epsilon_for_delta(_DELTA)
      - accounting.compose_epsilon([(record, 20)], delta=_DELTA)
    )
    <= 20 * 1e-4
  )


@pytest.mark.parametrize('epsilon', [0.1, 0.5, 1.0])
def test_sanity_bounds(epsilon):
  previous = 0.0
  for k in (1, 2, 5, 10, 20, 50, 100, 300):
    tight = accounting.compose_epsilon([(_svt(epsilon), k)], delta=_DELTA)
    summed = accounting.compose_epsilon(
      [(_svt(epsilon), k)], delta=_DELTA, method='sum'
    )
    advanced = epsilon * math.sqrt(2 * k * math.log(1 / _DELTA)) + k * (
      epsilon * math.expm1(epsilon)
    )
    rdp = accounting.compose_epsilon(
      [(_svt(epsilon), k)], delta=_DELTA, method='rdp'
    )
    assert summed == pytest.approx(k * epsilon, rel=1e-12)
    assert tight <= summed
    assert tight <= advanced
    assert tight <= rdp  # RDP is an upper bound, never tighter than PLD
    assert tight >= previous  # monotone in k
    # At δ > 0 one round spends slightly less than ε (see
    # test_single_round_closed_form); k rounds never less than one.
    one_round = math.log(math.exp(epsilon) - _DELTA * (1 + math.exp(epsilon)))
    assert tight >= one_round * (1 - 1e-12)
    previous = tight


def test_mixed_decimal_epsilons_are_exact():
  # 0.1 and 0.25 share the grid 0.05: exact against the two-group formula.
  history = [(_svt(0.1), 30), (_svt(0.25), 20)]
  assert accounting.pld_discretization([0.1, 0.25]) == pytest.approx(0.05)
  expected = _two_group_epsilon(0.1, 30, 0.25, 20, _DELTA)
  got = accounting.compose_epsilon(history, delta=_DELTA)
  assert got == pytest.approx(expected, rel=1e-9)


def test_mixed_epsilons_without_common_grid_are_pessimistic_within_kh():
  history = [(_svt(0.1), 30), (_svt(0.1234567), 20)]
  h = accounting.pld_discretization([0.1, 0.1234567])
  assert h == pytest.approx(1e-5)
  expected = _two_group_epsilon(0.1, 30, 0.1234567, 20, _DELTA)
  got = accounting.compose_epsilon(history, delta=_DELTA)
  assert expected - 1e-9 <= got <= expected + 50 * h


def test_equal_records_are_merged():
  split = [(_svt(0.2), 30), (_svt(0.2), 20)]
  assert accounting.compose_epsilon(split, delta=_DELTA) == (
    accounting.compose_epsilon([(_svt(0.2), 50)], delta=_DELTA)
  )


def test_delta_zero_is_the_sum_for_pure_rounds():
  history = [(_svt(0.1), 3), (_svt(0.25), 2)]
  for method in accounting.METHODS:
    assert accounting.compose_epsilon(
      history, delta=0, method=method
    ) == pytest.approx(0.8)
  gauss = [(_gauss(1.0), 1)]
  assert accounting.compose_epsilon(gauss, delta=0) == math.inf
  approx = [(_approx(1.0, 1e-9), 1)]
  assert accounting.compose_epsilon(approx, delta=0) == math.inf


def test_sum_method_adds_deltas():
  record = _approx(0.5, 1e-6)
  assert accounting.compose_epsilon(
    [(record, 10)], delta=1e-5, method='sum'
  ) == pytest.approx(5.0)
  assert (
    accounting.compose_epsilon([(record, 11)], delta=1e-5, method='sum')
    == math.inf
  )


def test_hundreds_of_rounds_are_consistent():
  # 500 rounds go through the grouped FFT self-composition; the result must
  # lie between the one-round value and the sum, and grow with ε. (Their
  # speed is measured by benchmarks/privacy_accounting.py, not here.)
  previous = 0.0
  for epsilon in (0.05, 0.3, 1.0, 2.0):
    got = accounting.compose_epsilon([(_svt(epsilon), 500)], delta=_DELTA)
    assert epsilon < got < 500 * epsilon
    assert got > previous
    previous = got
  mixed = accounting.compose_epsilon(
    [(_svt(0.1), 300), (_svt(0.2), 200)], delta=_DELTA
  )
  assert (
    accounting.compose_epsilon([(_svt(0.1), 500)], delta=_DELTA)
    < mixed
    < accounting.compose_epsilon([(_svt(0.2), 500)], delta=_DELTA)
  )


# ------------------------------------------------------------ gaussian ----


@pytest.mark.parametrize(
  'method, expected', [('rdp', 10.8602036), ('pld', 10.1224946)]
)
def test_gaussian_matches_tensorflow_privacy_golden(method, expected):
  ledger = Ledger()
  ledger.record_round(0, ['a'], _gauss(0.7))
  ledger.record_round(1, ['a'], _gauss(0.7))
  assert ledger.epsilon('a', delta=_DELTA, method=method) == pytest.approx(
    expected, abs=1e-7
  )


@pytest.mark.parametrize(
  'method, expected', [('rdp', 3.2391922), ('pld', 2.4612381)]
)
def test_poisson_sampled_gaussian_matches_tensorflow_privacy_golden(
  method, expected
):
  event = dp_accounting.PoissonSampledDpEvent(
    0.01, dp_accounting.GaussianDpEvent(0.7)
  )
  got = accounting.compose_epsilon(
    [(_gauss(event), 120)], delta=_DELTA, method=method
  )
  assert got == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize('z, k', [(0.7, 2), (1.0, 10), (5.0, 100)])
def test_gaussian_against_the_exact_gaussian_mechanism(z, k):
  exact = _gaussian_epsilon(z, k, _DELTA)
  history = [(_gauss(z), k)]
  pld = accounting.compose_epsilon(history, delta=_DELTA, method='pld')
  rdp = accounting.compose_epsilon(history, delta=_DELTA, method='rdp')
  assert exact - 1e-9 <= pld <= exact + 1e-3
  assert rdp >= exact
  summed = accounting.compose_epsilon(history, delta=_DELTA, method='sum')
  assert summed >= pld


def test_gaussian_and_svt_rounds_compose_into_one_pld():
  svt, gauss = _svt(0.5), _gauss(2.0)
  both = accounting.compose_epsilon([(svt, 20), (gauss, 10)], delta=_DELTA)
  only_svt = accounting.compose_epsilon([(svt, 20)], delta=_DELTA)
  only_gauss = accounting.compose_epsilon([(gauss, 10)], delta=_DELTA)
  assert max(only_svt, only_gauss) < both < only_svt + only_gauss
  rdp = accounting.compose_epsilon(
    [(svt, 20), (gauss, 10)], delta=_DELTA, method='rdp'
  )
  assert rdp >= both


def test_gaussian_without_noise_or_non_private_event_is_infinite():
  for record in (
    _gauss(0.0),
    _gauss(dp_accounting.NonPrivateDpEvent()),
  ):
    for method in accounting.METHODS:
      assert (
        accounting.compose_epsilon([(record, 1)], delta=_DELTA, method=method)
        == math.inf
      )


def test_gaussian_record_normalises_numpy_numbers():
  # TFF hands events back with numpy scalars.
  record = _gauss(dp_accounting.GaussianDpEvent(np.float64(0.7)))
  assert record == _gauss(0.7)
  assert type(record.dp_event.noise_multiplier) is float
  assert _gauss(np.float32(0.5)).dp_event.noise_multiplier == 0.5


# -------------------------------------------------------- no guarantee ----


@pytest.mark.parametrize('mechanism', ['none', 'selective_sharing'])
def test_no_guarantee_round_is_never_finite(mechanism):
  ledger = Ledger()
  for round_num in range(5):
    ledger.record_round(round_num, ['a', 'b'], _svt(0.1))
  ledger.record_round(5, ['b'], _none(mechanism))
  for method in accounting.METHODS:
    assert math.isfinite(ledger.epsilon('a', delta=_DELTA, method=method))
    assert ledger.epsilon('b', delta=_DELTA, method=method) == math.inf
  assert ledger.epsilon('b', delta=0) == math.inf
  assert ledger.worst_case(_DELTA) == ('b', math.inf)
  assert ledger.would_exceed(['a', 'b'], _svt(0.1), 1e6, _DELTA) == ['b']


def test_record_numbers_are_normalised_and_keys_canonical():
  # TFF hands events back with numpy scalars.
  record = Record(
    'sparse_vector', events.EpsilonDeltaDpEvent(np.float64(0.3), np.float64(0))
  )
  assert (record.epsilon, record.delta) == (0.3, 0.0)
  assert type(record.dp_event.epsilon) is float
  assert record == _svt(0.3)
  assert record.key == (
    '{"dp_event": {"class_name": "EpsilonDeltaDpEvent", "delta": 0.0, '
    '"epsilon": 0.3}, "mechanism": "sparse_vector"}'
  )
  # The label is part of the record; the accountant never reads it.
  assert Record('svt', record.dp_event) != record
  noop = Record('idle', dp_accounting.NoOpDpEvent())
  assert noop.has_guarantee and (noop.epsilon, noop.delta) == (0.0, 0.0)
  assert accounting.compose_epsilon([(noop, 3)], delta=_DELTA) == 0.0


def test_version_1_records_are_read():
  # Ledger format 1 stored the client-side rounds as (ε, δ) pairs.
  assert Record.from_dict(
    {'mechanism': 'sparse_vector', 'epsilon': 0.2, 'delta': 0.0}
  ) == _svt(0.2)
  assert Record.from_dict(
    {'mechanism': 'selective_sharing', 'epsilon': 'inf', 'delta': 0.0}
  ) == _none('selective_sharing')
  gauss = {
    'mechanism': 'gaussian',
    'dp_event': {'class_name': 'GaussianDpEvent', 'noise_multiplier': 4.0},
  }
  assert Record.from_dict(gauss) == _gauss(4.0)


# -------------------------------------------------------------- ledger ----


def test_replayed_round_is_ignored_and_conflict_records_nothing():
  ledger = Ledger()
  record = _svt(0.2)
  assert ledger.record_round(0, ['a', 'b'], record) == ['a', 'b']
  before = ledger.epsilons(_DELTA)
  assert ledger.record_round(0, ['b', 'a'], record) == []
  assert ledger.epsilons(_DELTA) == before
  assert ledger.num_rounds('a') == 1
  # A replay that picked another client adds it.
  assert ledger.record_round(0, ['a', 'c'], record) == ['c']
  with pytest.raises(ValueError, match=r"record must equal .*'a' in round 0"):
    ledger.record_round(0, ['d', 'a'], _svt(0.3))
  assert ledger.client_ids == ('a', 'b', 'c')  # 'd' was not recorded
  assert ledger.history('a') == [(0, record)]


def test_epsilons_worst_case_and_history():
  ledger = Ledger(client_ids=['a', 'b', 'idle'])
  for round_num in range(10):
    clients = ['a', 'b'] if round_num % 2 else ['a']
    ledger.record_round(round_num, clients, _svt(0.5))
  spent = ledger.epsilons(_DELTA)
  assert spent['a'] == pytest.approx(_kov_epsilon(0.5, 10, _DELTA), rel=1e-9)
  assert spent['b'] == pytest.approx(_kov_epsilon(0.5, 5, _DELTA), rel=1e-9)
  assert spent['idle'] == 0.0
  assert ledger.worst_case(_DELTA) == ('a', spent['a'])
  assert [r for r, _ in ledger.history('b')] == [1, 3, 5, 7, 9]
  assert Ledger().worst_case(_DELTA) is None


def test_budget_check_boundaries_with_summation():
  ledger = Ledger()
  for round_num in range(9):
    ledger.record_round(round_num, ['a'], _svt(0.1))
  kwargs = dict(method='sum')
  # Ten rounds of 0.1 meet a budget of exactly 1.0 (floating-point sums
  # are within the relative 1e-9 margin) ...
  assert ledger.would_exceed(['a'], _svt(0.1), 1.0, _DELTA, **kwargs) == []
  # ... and just below it, they exceed it.
  assert ledger.would_exceed(['a'], _svt(0.1), 0.999999, _DELTA, **kwargs) == [
    'a'
  ]
  # A client the ledger has not seen spends one round.
  assert ledger.would_exceed(['new'], _svt(0.1), 0.1, _DELTA, **kwargs) == []
  assert ledger.would_exceed(['new'], _svt(0.1), 0.09, _DELTA, **kwargs) == [
    'new'
  ]


def test_budget_check_boundaries_with_tight_composition():
  ledger = Ledger()
  for round_num in range(19):
    ledger.record_round(round_num, ['a', 'b'], _svt(0.3))
  ledger.record_round(19, ['b'], _svt(0.3))
  at_20 = accounting.compose_epsilon([(_svt(0.3), 20)], delta=_DELTA)
  check = ledger.would_exceed
  assert check(['a', 'b'], _svt(0.3), at_20, _DELTA) == ['b']
  assert check(['a'], _svt(0.3), at_20 * (1 - 1e-6), _DELTA) == ['a']
  # Re-checking a round already recorded (a replay) costs nothing new.
  assert check(['b'], _svt(0.3), at_20, _DELTA, round_num=19) == []
  with pytest.raises(ValueError, match='next_record must equal'):
    check(['b'], _svt(0.4), at_20, _DELTA, round_num=19)
  assert check(['a'], _svt(0.3), math.inf, _DELTA) == []


def test_json_round_trip():
  ledger = Ledger(client_ids=['idle'])
  adaptive = dp_accounting.ComposedDpEvent(
    [dp_accounting.GaussianDpEvent(5.0), dp_accounting.GaussianDpEvent(9.0)]
  )
  for round_num in range(10):
    ledger.record_round(round_num, ['a', 'b'], _svt(0.2))
  ledger.record_round(10, ['a'], _gauss(adaptive))
  ledger.record_round(12, ['a'], _gauss(4.0))
  ledger.record_round(11, ['b'], _none('selective_sharing'))
  text = ledger.to_json()
  data = json.loads(text)
  assert data['format'] == 'tff_brats.privacy_ledger'
  assert data['version'] == 2
  assert data['clients']['a'] == {'0-9': 0, '10': 1, '12': 2}
  assert data['clients']['idle'] == {}
  restored = Ledger.from_json(text)
  assert restored.to_json() == text
  assert restored.client_ids == ('idle', 'a', 'b')
  for method in ('pld', 'rdp', 'sum'):
    assert restored.epsilons(_DELTA, method) == ledger.epsilons(_DELTA, method)
  assert restored.history('a') == ledger.history('a')


@pytest.mark.parametrize(
  'mutate, message',
  [
    (lambda d: d.update(version=3), r'version must be one of \(1, 2\)'),
    (lambda d: d.update(format='other'), 'must have format'),
    (
      lambda d: d['records'][0].update(mechanism=''),
      'mechanism must be a non-empty name',
    ),
    (
      lambda d: (
        d['records'].append(
          {'mechanism': 'gaussian', 'dp_event': {'class_name': 'system'}}
        )
        or d['clients']['a'].update({'9': 1})
      ),
      'must name a dp_accounting DpEvent class',
    ),
    (lambda d: d['clients']['a'].update({'9': 7}), 'bad record index'),
  ],
)
def test_malformed_json_is_rejected(mutate, message):
  ledger = Ledger()
  ledger.record_round(0, ['a'], _svt(0.2))
  data = json.loads(ledger.to_json())
  mutate(data)
  with pytest.raises(ValueError, match=message):
    Ledger.from_json(json.dumps(data))
  with pytest.raises(ValueError, match='valid JSON'):
    Ledger.from_json('{')


def test_format_epsilon():
  assert accounting.format_epsilon(math.inf) == 'inf'
  assert accounting.format_epsilon(3.14159265) == '3.1416'
  assert accounting.format_epsilon(99999.0) == '99999.0000'
  assert accounting.format_epsilon(2e8) == '2.0000e+08'


def test_table():
  ledger = Ledger(client_ids=['CBICA', 'TCIA01', 'TCIA02', '2013'])
  for round_num in range(10):
    ledger.record_round(round_num, ['CBICA', 'TCIA01'], _svt(0.5))
  ledger.record_round(10, ['TCIA01'], _none('selective_sharing'))
  ledger.record_round(0, ['2013'], _gauss(1.0))
  caveat = (
    "The guarantee holds for changes of an institution's data that keep its "
    'local step count n, which is sent in the clear.'
  )
  text = ledger.table(_DELTA, notes=[caveat])
  lines = text.splitlines()
  assert lines[0] == 'Privacy spent per institution at δ = 1e-05'
  assert lines[1].split() == [
    'client',
    'rounds',
    'mechanism',
    'ε',
    'summed',
    'ε',
    'tight',
    '(PLD)',
  ]
  tight = f'{_kov_epsilon(0.5, 10, _DELTA):.4f}'
  assert lines[3].split() == ['CBICA', '10', 'sparse_vector', '5.0000', tight]
  assert lines[4].split() == [
    'TCIA01',
    '11',
    'sparse_vector+selective_sharing',
    'inf',
    'inf',
  ]
  assert lines[5].split() == ['TCIA02', '0', '-', '0.0000', '0.0000']
  gauss = f'{ledger.epsilon("2013", delta=_DELTA):.4f}'
  assert lines[6].split()[:3] == ['2013', '1', 'gaussian']
  assert lines[6].split()[4] == gauss
  assert 'step count n' in text
  assert all(len(line) <= 79 for line in lines[7:])


def test_many_clients_and_rounds_add_up():
  rng = np.random.default_rng(0)
  clients = [f'client-{i:02d}' for i in range(13)]
  ledger = Ledger(client_ids=clients)
  picks = {client: 0 for client in clients}
  for round_num in range(300):
    picked = list(rng.choice(clients, size=4, replace=False))
    assert ledger.would_exceed(picked, _svt(0.1), 100.0, _DELTA) == []
    ledger.record_round(round_num, picked, _svt(0.1))
    for client in picked:
      picks[client] += 1
  assert sum(picks.values()) == 1200
  for client in clients:
    assert ledger.num_rounds(client) == picks[client]
    assert ledger.epsilon(client, delta=_DELTA) == pytest.approx(
      accounting.compose_epsilon([(_svt(0.1), picks[client])], delta=_DELTA)
    )
  assert len(ledger.table(_DELTA).splitlines()) > 13


# ---------------------------------------------------------- validation ----


@pytest.mark.parametrize(
  'make, message',
  [
    (
      lambda: Record('', events.EpsilonDeltaDpEvent(1.0)),
      r"mechanism must be a non-empty name. Found ''.",
    ),
    (
      lambda: Record('sparse_vector', 0.3),
      r'dp_event must be a dp_accounting DpEvent. Found 0.3.',
    ),
    (
      lambda: events.EpsilonDeltaDpEvent(-1.0),
      r'epsilon must be a finite non-negative number. Found -1.0.',
    ),
    (
      lambda: events.EpsilonDeltaDpEvent(math.inf),
      r'epsilon must be a finite non-negative number. Found inf.',
    ),
    (
      lambda: _approx(1.0, 1.0),
      r'delta must be in \[0, 1\). Found 1.0.',
    ),
    (
      lambda: _gauss(
        dp_accounting.SampledWithoutReplacementDpEvent(
          10, 2, dp_accounting.GaussianDpEvent(1.0)
        )
      ),
      r"dp_event must be an EpsilonDeltaDpEvent or an event dp_accounting's "
      r'PLDAccountant supports',
    ),
  ],
)
def test_record_validation(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_argument_validation():
  ledger = Ledger()
  ledger.record_round(0, ['a'], _svt(0.1))
  cases = [
    (
      lambda: ledger.record_round(-1, ['a'], _svt(0.1)),
      r'round_num must be a non-negative integer. Found -1.',
    ),
    (
      lambda: ledger.record_round(1, 'a', _svt(0.1)),
      r"client_ids must be a sequence of strings, not a string. Found 'a'.",
    ),
    (
      lambda: ledger.record_round(1, [], _svt(0.1)),
      r'client_ids must name at least one client. Found \[\].',
    ),
    (
      lambda: ledger.record_round(1, ['a', 'a'], _svt(0.1)),
      r"client_ids must not repeat a client. Found \['a', 'a'\].",
    ),
    (
      lambda: ledger.record_round(1, ['a'], 0.1),
      r'record must be a PrivacyRecord. Found 0.1.',
    ),
    (
      lambda: ledger.epsilon('zz', delta=_DELTA),
      r"client_id must be a client of the ledger. Found 'zz'.",
    ),
    (
      lambda: ledger.epsilon('a', delta=1.5),
      r'delta must be in \[0, 1\). Found 1.5.',
    ),
    (
      lambda: ledger.epsilon('a', delta=_DELTA, method='moments'),
      r"method must be one of pld, rdp, sum. Found 'moments'.",
    ),
    (
      lambda: ledger.would_exceed(['a'], _svt(0.1), -1.0, _DELTA),
      r'target_epsilon must be a non-negative number. Found -1.0.',
    ),
    (
      lambda: accounting.compose_epsilon(
        [(_approx(1.0, 1e-9), 2)],
        delta=_DELTA,
        method='rdp',
      ),
      r"method='rdp' cannot compose \(ε, δ\) records with δ > 0",
    ),
    (
      lambda: accounting.compose_epsilon([(_svt(0.1), -2)], delta=_DELTA),
      r'count must be a non-negative integer. Found -2.',
    ),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()


def test_epsilon_and_delta_of_records():
  assert (_svt(0.5).epsilon, _svt(0.5).delta) == (0.5, 0.0)
  assert (_approx(1.0, 1e-6).epsilon, _approx(1.0, 1e-6).delta) == (1.0, 1e-6)
  assert (_none().epsilon, _none().delta) == (math.inf, 0.0)
  # A Gaussian round has no ε of its own: the accountant composes it.
  assert (_gauss(1.0).epsilon, _gauss(1.0).delta) == (None, None)
