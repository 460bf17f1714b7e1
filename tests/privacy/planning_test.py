"""Tests for tff_brats.privacy.planning (the SVT's budget split and noise
scales are tested in budget_test.py).

Golden noise multiplier: tensorflow_privacy 0.9.0's
`compute_dp_sgd_privacy_test.py` (`test_compute_dp_sgd_example_privacy`)
pins ε = 10.8602036 (RDP) at δ = 1e-5 for 2 unsampled Gaussian steps with
noise 0.7, so solving for the noise at that target must give 0.7.
"""

import math

import dp_accounting
import pytest

from tff_brats.privacy import accounting
from tff_brats.privacy import events
from tff_brats.privacy import planning

_DELTA = 1e-5


def _pure(epsilon):
  return accounting.PrivacyRecord('svt', events.EpsilonDeltaDpEvent(epsilon))


def _gauss(noise_multiplier):
  event = dp_accounting.GaussianDpEvent(noise_multiplier)
  return accounting.PrivacyRecord('gaussian', event)


pytestmark = pytest.mark.filterwarnings(
  'ignore:np.find_common_type is deprecated:DeprecationWarning'
)


def test_participation():
  part = planning.participation(100, 3, 13)
  assert part.fraction == pytest.approx(3 / 13)
  assert part.worst_case_rounds == 100
  assert part.expected_rounds == pytest.approx(300 / 13)
  assert part.expected_rounds_ceil == 24
  every = planning.participation(50, 13, 13)
  assert (every.fraction, every.expected_rounds_ceil) == (1.0, 50)


@pytest.mark.parametrize('method', ['pld', 'rdp'])
@pytest.mark.parametrize('target, k', [(1.0, 1), (5.0, 10), (10.0, 300)])
def test_solve_round_epsilon_meets_the_target(method, target, k):
  x = planning.solve_round_epsilon(
    target, delta=_DELTA, num_rounds=k, method=method
  )
  record = _pure(x)

  def spent(per_round):
    record = _pure(per_round)
    return planning.total_epsilon(record, k, delta=_DELTA, method=method)

  assert not accounting.exceeds(spent(x), target)
  assert spent(x) == pytest.approx(target, rel=1e-8)
  assert accounting.exceeds(spent(x * (1 + 1e-6)), target)
  if method == 'pld':  # tight composition allows at least the summed share
    assert x >= target / k * (1 - 1e-12)
  assert record.epsilon == x


def test_solve_round_epsilon_by_summation():
  assert planning.solve_round_epsilon(
    1.0, delta=_DELTA, num_rounds=10, method='sum'
  ) == pytest.approx(0.1)
  assert planning.solve_round_epsilon(1.0, delta=0, num_rounds=4) == 0.25


def test_solve_release_and_selection_epsilon():
  release = planning.solve_release_epsilon(
    selection_epsilon=0.05, target_epsilon=10.0, delta=_DELTA, num_rounds=100
  )
  record = _pure(0.05 + release)
  spent = planning.total_epsilon(record, 100, delta=_DELTA)
  assert spent == pytest.approx(10.0, rel=1e-8)
  assert not accounting.exceeds(spent, 10.0)
  selection = planning.solve_selection_epsilon(
    release_epsilon=release, target_epsilon=10.0, delta=_DELTA, num_rounds=100
  )
  assert selection == pytest.approx(0.05, rel=1e-8)
  with pytest.raises(
    ValueError,
    match=r'selection_epsilon must be below 0.204\d*, the per-round ε that '
    r'meets target_epsilon=10.0 at delta=1e-05 over 100 rounds. Found 0.3.',
  ):
    planning.solve_release_epsilon(
      selection_epsilon=0.3, target_epsilon=10.0, delta=_DELTA, num_rounds=100
    )


def test_solve_noise_multiplier_reproduces_tensorflow_privacy():
  z = planning.solve_noise_multiplier(
    target_epsilon=10.8602036, delta=_DELTA, num_rounds=2, method='rdp'
  )
  assert z == pytest.approx(0.7, abs=1e-6)
  record = _gauss(z)
  spent = planning.total_epsilon(record, 2, delta=_DELTA, method='rdp')
  assert spent <= 10.8602036
  assert spent == pytest.approx(10.8602036, rel=1e-5)


def test_solve_noise_multiplier_with_pld():
  # The PLD ε of 10 rounds with noise 5 (a large noise keeps the PLDs
  # small and the test fast) must lead back to noise 5.
  target = planning.total_epsilon(_gauss(5.0), 10, delta=_DELTA, method='pld')
  z = planning.solve_noise_multiplier(
    target_epsilon=target, delta=_DELTA, num_rounds=10, method='pld'
  )
  assert z == pytest.approx(5.0, rel=1e-4)


def test_solve_noise_multiplier_meets_target_over_many_rounds():
  z = planning.solve_noise_multiplier(
    target_epsilon=5.0, delta=_DELTA, num_rounds=200
  )
  spent = planning.total_epsilon(_gauss(z), 200, delta=_DELTA, method='rdp')
  assert 5.0 - 1e-4 <= spent <= 5.0
  less = planning.total_epsilon(
    _gauss(z * (1 - 1e-4)),
    200,
    delta=_DELTA,
    method='rdp',
  )
  assert less > 5.0


@pytest.mark.parametrize(
  'call, message',
  [
    (
      lambda: planning.participation(10, 5, 4),
      r'clients_per_round must be at most num_clients=4. Found 5.',
    ),
    (
      lambda: planning.participation(0, 1, 4),
      r'total_rounds must be a positive integer. Found 0.',
    ),
    (
      lambda: planning.solve_round_epsilon(
        math.inf, delta=_DELTA, num_rounds=3
      ),
      r'target_epsilon must be a positive number. Found inf.',
    ),
    (
      lambda: planning.solve_noise_multiplier(
        target_epsilon=1.0, delta=0.0, num_rounds=3
      ),
      r'delta must be in \(0, 1\). Found 0.0.',
    ),
    (
      lambda: planning.solve_noise_multiplier(
        target_epsilon=1.0, delta=_DELTA, num_rounds=3, method='sum'
      ),
      r"method must be one of rdp, pld. Found 'sum'.",
    ),
  ],
)
def test_validation(call, message):
  with pytest.raises(ValueError, match=message):
    call()
