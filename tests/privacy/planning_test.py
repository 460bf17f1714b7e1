"""Tests for tff_brats.privacy.planning.

Hand-computed SVT internals: q = 0.5, N = 4 gives c = 2 and (2c)^(2/3) =
4^(2/3) = 2.5198420997897464, so with ε = 1 the threshold gets ε1 =
1 / 3.5198420997897464 = 0.2841036534166501 and the queries ε2 = 1 − ε1;
with γ = 0.1 and ε3 = 0.5 the Laplace scales are γ/ε1, 2cγ/ε2 = 0.4/ε2 and
2cγ/ε3 = 0.8.

Golden noise multiplier: tensorflow_privacy 0.9.0's
`compute_dp_sgd_privacy_test.py` (`test_compute_dp_sgd_example_privacy`)
pins ε = 10.8602036 (RDP) at δ = 1e-5 for 2 unsampled Gaussian steps with
noise 0.7, so solving for the noise at that target must give 0.7.
"""

import math

import pytest

from tff_brats.privacy import accounting
from tff_brats.privacy import planning

_DELTA = 1e-5

pytestmark = pytest.mark.filterwarnings(
  'ignore:np.find_common_type is deprecated:DeprecationWarning'
)


@pytest.mark.parametrize(
  'fraction, n, c',
  [(0.1, 4_702_227, 470_223), (0.3, 10, 3), (1.0, 5, 5), (1e-9, 10, 1)],
)
def test_num_shared(fraction, n, c):
  assert planning.num_shared(fraction, n) == c


def test_sparse_vector_parameters_hand_computed():
  p = planning.sparse_vector_parameters(
    shared_fraction=0.5,
    num_values=4,
    clip_bound=0.1,
    selection_epsilon=1.0,
    release_epsilon=0.5,
  )
  eps1 = 0.2841036534166501
  assert p.num_shared == 2
  assert p.threshold_epsilon == pytest.approx(eps1, rel=1e-14)
  assert p.query_epsilon == pytest.approx(1 - eps1, rel=1e-14)
  assert p.threshold_scale == pytest.approx(0.1 / eps1, rel=1e-14)
  assert p.query_scale == pytest.approx(0.4 / (1 - eps1), rel=1e-14)
  assert p.release_scale == pytest.approx(0.8, rel=1e-14)
  assert p.epsilon_per_round == 1.5
  assert planning.sparse_vector_epsilon(1.0, 0.5) == 1.5


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
  record = accounting.PrivacyRecord(
    accounting.SPARSE_VECTOR, epsilon=x, delta=0.0
  )

  def spent(per_round):
    record = accounting.PrivacyRecord(
      accounting.SPARSE_VECTOR, epsilon=per_round, delta=0.0
    )
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
  record = accounting.PrivacyRecord.sparse_vector(0.05, release)
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
  record = accounting.PrivacyRecord.gaussian(z)
  spent = planning.total_epsilon(record, 2, delta=_DELTA, method='rdp')
  assert spent <= 10.8602036
  assert spent == pytest.approx(10.8602036, rel=1e-5)


def test_solve_noise_multiplier_with_pld():
  # The PLD ε of 10 rounds with noise 5 (a large noise keeps the PLDs
  # small and the test fast) must lead back to noise 5.
  target = planning.total_epsilon(
    accounting.PrivacyRecord.gaussian(5.0), 10, delta=_DELTA, method='pld'
  )
  z = planning.solve_noise_multiplier(
    target_epsilon=target, delta=_DELTA, num_rounds=10, method='pld'
  )
  assert z == pytest.approx(5.0, rel=1e-4)


def test_solve_noise_multiplier_meets_target_over_many_rounds():
  z = planning.solve_noise_multiplier(
    target_epsilon=5.0, delta=_DELTA, num_rounds=200
  )
  spent = planning.total_epsilon(
    accounting.PrivacyRecord.gaussian(z), 200, delta=_DELTA, method='rdp'
  )
  assert 5.0 - 1e-4 <= spent <= 5.0
  less = planning.total_epsilon(
    accounting.PrivacyRecord.gaussian(z * (1 - 1e-4)),
    200,
    delta=_DELTA,
    method='rdp',
  )
  assert less > 5.0


@pytest.mark.parametrize(
  'call, message',
  [
    (
      lambda: planning.num_shared(0.0, 10),
      r'shared_fraction must be in \(0, 1\]. Found 0.0.',
    ),
    (
      lambda: planning.num_shared(0.5, 0),
      r'num_values must be a positive integer. Found 0.',
    ),
    (
      lambda: planning.sparse_vector_parameters(
        shared_fraction=0.1,
        num_values=10,
        clip_bound=0.0,
        selection_epsilon=1.0,
        release_epsilon=1.0,
      ),
      r'clip_bound must be a positive number. Found 0.0.',
    ),
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


@pytest.mark.slow  # imports TensorFlow
def test_agrees_with_the_mechanisms():
  mechanisms = pytest.importorskip('tff_brats.privacy.mechanisms')
  for q in (0.1, 0.3, 0.25, 1e-6, 0.123456789, 1.0):
    for n in (1, 10, 30, 999, 4_702_227):
      assert planning.num_shared(q, n) == mechanisms.shared_count(q, n)
  svt = mechanisms.SparseVectorTechnique(
    shared_fraction=0.1,
    clip_bound=1e-4,
    selection_epsilon=0.1,
    release_epsilon=0.2,
    threshold=1e-4,
  )
  ours = planning.sparse_vector_parameters(
    shared_fraction=0.1,
    num_values=4_702_227,
    clip_bound=1e-4,
    selection_epsilon=0.1,
    release_epsilon=0.2,
  )
  theirs = svt.noise_scales(4_702_227)
  assert ours.threshold_epsilon == pytest.approx(theirs.threshold_epsilon)
  assert ours.query_epsilon == pytest.approx(theirs.query_epsilon)
  assert ours.threshold_scale == pytest.approx(theirs.threshold)
  assert ours.query_scale == pytest.approx(theirs.query)
  assert ours.release_scale == pytest.approx(theirs.release)
  record = accounting.PrivacyRecord.for_mechanism(svt)
  assert record == accounting.PrivacyRecord.sparse_vector(0.1, 0.2)
  sharing = mechanisms.SelectiveSharing(shared_fraction=0.1, clip_bound=1.0)
  assert not accounting.PrivacyRecord.for_mechanism(sharing).has_guarantee
  assert not accounting.PrivacyRecord.for_mechanism(
    mechanisms.NoPrivacy()
  ).has_guarantee
