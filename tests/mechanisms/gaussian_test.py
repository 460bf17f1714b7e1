"""Tests for tff_brats.mechanisms.gaussian (TFF's DP-FedAvg).

Golden noise multiplier: tensorflow_privacy 0.9.0's
`compute_dp_sgd_privacy_test.py` (`test_compute_dp_sgd_example_privacy`)
pins ε = 10.1224946 (PLD; 10.8602036 RDP) at δ = 1e-5 for 2 unsampled
Gaussian steps with noise 0.7, so solving for the noise at that target with
the PLD accountant must give 0.7. README: ε = 5 over 50 rounds needs
z = 6.30646 with the PLD accountant, against 6.73619 with RDP (planning's
RDP solver, tested in tests/privacy/planning_test.py): 6.4% less noise.
"""

import dp_accounting
import pytest
import tensorflow_federated as tff

from tff_brats import mechanisms
from tff_brats.aggregators import weights_dropping
from tff_brats.privacy import accounting
from tff_brats.privacy import planning


def test_guarantee_is_a_gaussian_event():
  gauss = mechanisms.Gaussian(noise_multiplier=1.5, l2_norm_clip=0.2)
  assert gauss.name == 'gaussian'
  assert gauss.dp_event() == dp_accounting.GaussianDpEvent(1.5)
  assert gauss.has_guarantee
  assert gauss.record().mechanism == 'gaussian'
  assert gauss.guarantee_text() == (
    'GaussianDpEvent(noise_multiplier=1.5) per round'
  )
  central, float_noise = gauss.caveats
  assert 'secure aggregation' in central
  assert 'floating point' in float_noise and 'Mironov' in float_noise
  assert gauss.describe(None) == {'noise_stddev': pytest.approx(0.3)}


def test_aggregation_factories():
  gauss = mechanisms.Gaussian(noise_multiplier=1.0, l2_norm_clip=0.1)
  weighted = gauss.aggregation_factory(clients_per_round=3)
  assert isinstance(weighted, weights_dropping.WeightsDroppingFactory)
  unweighted = gauss.aggregation_factory(weighted=False, clients_per_round=3)
  assert isinstance(unweighted, tff.aggregators.DifferentiallyPrivateFactory)
  with pytest.raises(
    ValueError,
    match='^clients_per_round must be a positive integer. Found None.$',
  ):
    gauss.aggregation_factory()
  with pytest.raises(
    ValueError, match='noise_seed must be None for the gaussian'
  ):
    gauss.aggregation_factory(clients_per_round=3, noise_seed=1)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(), '^noise_multiplier must be given for gaussian. Found None.$'),
    (dict(noise_multiplier=-1.0), 'noise_multiplier must be a non-negative'),
    (
      dict(noise_multiplier=1.0, l2_norm_clip=0.0),
      '^l2_norm_clip must be a positive number. Found 0.0.$',
    ),
  ],
)
def test_rejects(kwargs, message):
  with pytest.raises(ValueError, match=message):
    mechanisms.Gaussian(**kwargs)


def test_solve_reproduces_tensorflow_privacy():
  solved = mechanisms.Gaussian.solve(
    'noise_multiplier', target_epsilon=10.1224946, delta=1e-5, num_rounds=2
  )
  assert solved.method == 'pld'
  assert solved.value == pytest.approx(0.7, rel=1e-5)
  assert solved.mechanism.noise_multiplier == solved.value
  readme = mechanisms.Gaussian.solve(
    'noise_multiplier', target_epsilon=5.0, delta=1e-5, num_rounds=50
  )
  assert readme.value == pytest.approx(6.30646, abs=5e-6)
  rdp = planning.solve_noise_multiplier(
    target_epsilon=5.0, delta=1e-5, num_rounds=50, method='rdp'
  )
  assert rdp == pytest.approx(6.73619, abs=5e-6)
  assert readme.value < 0.94 * rdp
  # The ledger (PLD) meets the target with the solved noise.
  spent = planning.total_epsilon(readme.mechanism.record(), 50, delta=1e-5)
  assert spent == pytest.approx(5.0, rel=1e-6)
  assert not accounting.exceeds(spent, 5.0)
