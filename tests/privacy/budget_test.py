"""Tests for tff_brats.privacy.budget.

Hand-computed SVT internals: q = 0.5, N = 4 gives c = 2 and (2c)^(2/3) =
4^(2/3) = 2.5198420997897464, so with ε = 1 the threshold gets ε1 =
1 / 3.5198420997897464 = 0.2841036534166501 and the queries ε2 = 1 − ε1;
with γ = 0.1 and ε3 = 0.5 the Laplace scales are γ/ε1, 2cγ/ε2 = 0.4/ε2 and
2cγ/ε3 = 0.8. With c = 4: ε1 = 1 / (1 + 8^(2/3)) = 1/5.
"""

import pytest

from tff_brats.privacy import budget


@pytest.mark.parametrize(
  'fraction,size,count',
  [
    (0.1, 30, 3),  # 0.1·30 is 3.0000000000000004 in binary floating point
    (0.07, 100, 7),  # 7.000000000000001 in binary
    (0.3, 10, 3),
    (0.5, 3, 2),
    (0.3333, 3, 1),
    (1e-9, 10, 1),  # at least one value
    (1.0, 7, 7),
    (1.0, 5, 5),
    (0.9, 4_702_227, 4_232_005),
    (0.1, 4_702_227, 470_223),
  ],
)
def test_shared_count_by_hand(fraction, size, count):
  assert budget.shared_count(fraction, size) == count


def test_shared_count_rejects():
  with pytest.raises(
    ValueError, match='^num_values must be a positive integer. Found 0.$'
  ):
    budget.shared_count(0.5, 0)
  with pytest.raises(
    ValueError, match=r'^shared_fraction must be in \(0, 1\]. Found 0.0.$'
  ):
    budget.shared_count(0.0, 3)


def test_sparse_vector_budget_hand_computed():
  b = budget.sparse_vector_budget(
    shared_count=budget.shared_count(0.5, 4),
    clip_bound=0.1,
    selection_epsilon=1.0,
    release_epsilon=0.5,
  )
  eps1 = 0.2841036534166501
  assert b.shared_count == 2
  assert b.threshold_epsilon == pytest.approx(eps1, rel=1e-14)
  assert b.query_epsilon == pytest.approx(1 - eps1, rel=1e-14)
  assert b.threshold_scale == pytest.approx(0.1 / eps1, rel=1e-14)
  assert b.query_scale == pytest.approx(0.4 / (1 - eps1), rel=1e-14)
  assert b.release_scale == pytest.approx(0.8, rel=1e-14)
  assert b.epsilon_per_round == 1.5


def test_sparse_vector_budget_with_c_4():
  b = budget.sparse_vector_budget(
    shared_count=4, clip_bound=1.0, selection_epsilon=1.0, release_epsilon=0.5
  )
  assert b.threshold_epsilon == pytest.approx(0.2)
  assert b.query_scale == pytest.approx(2 * 4 * 1.0 / 0.8)
  assert b.release_scale == pytest.approx(2 * 4 * 1.0 / 0.5)


@pytest.mark.parametrize(
  'name, value, message',
  [
    ('shared_count', 0, 'shared_count must be a positive integer. Found 0.'),
    ('clip_bound', 0.0, 'clip_bound must be a positive number. Found 0.0.'),
    (
      'selection_epsilon',
      float('inf'),
      'selection_epsilon must be a positive number. Found inf.',
    ),
    ('release_epsilon', None, 'release_epsilon must be a positive number.'),
  ],
)
def test_sparse_vector_budget_rejects(name, value, message):
  kwargs = dict(
    shared_count=4, clip_bound=1.0, selection_epsilon=1.0, release_epsilon=0.5
  )
  with pytest.raises(ValueError, match=message):
    budget.sparse_vector_budget(**{**kwargs, name: value})


def test_sparse_vector_lattice_by_hand():
  scales = budget.sparse_vector_budget(
    shared_count=4, clip_bound=1.0, selection_epsilon=3.0, release_epsilon=2.0
  )
  lattice = budget.sparse_vector_lattice(scales, threshold=0.3)
  # γ = 1 = 2^0: Δ = 2^-16, G = 65536; T = round(0.3·65536) = 19661.
  assert (lattice.exponent, lattice.bound, lattice.threshold) == (
    -16,
    65536,
    19661,
  )
  # a1 = ⌈G/ε1⌉ = ⌈65536/0.6⌉, a2 = ⌈2·4·G/2.4⌉, a3 = ⌈2·4·G/2⌉.
  assert lattice.threshold_scale == 109227
  assert lattice.query_scale == 218454
  assert lattice.release_scale == 262144
  # What each part really spends is at most its share, summing to <= ε.
  assert lattice.threshold_epsilon <= scales.threshold_epsilon
  assert lattice.threshold_epsilon + lattice.query_epsilon <= 3.0
  assert lattice.release_epsilon == 2.0
  assert lattice.spacing == 2.0**-16


def test_sparse_vector_lattice_coarsens_for_huge_scales():
  # a3 = 2cG/ε3 with c = 10^6, ε3 = 10^-4 and G = 2^16 is 1.3e15 > 2^48
  # (2.8e14); G = 2^14 still gives 3.3e14, G = 2^13 gives 1.6e14: γ = 1 is
  # a power of two, so G = 2^13 exactly.
  scales = budget.sparse_vector_budget(
    shared_count=10**6,
    clip_bound=1.0,
    selection_epsilon=1.0,
    release_epsilon=1e-4,
  )
  lattice = budget.sparse_vector_lattice(scales, threshold=0.0)
  assert (
    max(lattice.threshold_scale, lattice.query_scale, lattice.release_scale)
    <= budget.MAX_SCALE
  )
  assert lattice.bound == 2**13
  assert lattice.release_epsilon <= 1e-4


def test_sparse_vector_lattice_errors_name_the_value():
  scales = budget.sparse_vector_budget(
    shared_count=10**7,
    clip_bound=1.0,
    selection_epsilon=1.0,
    release_epsilon=1e-12,
  )
  with pytest.raises(ValueError, match=r'release_epsilon = 1e-12'):
    budget.sparse_vector_lattice(scales, threshold=0.0)
  ok = budget.sparse_vector_budget(
    shared_count=4, clip_bound=1.0, selection_epsilon=3.0, release_epsilon=2.0
  )
  with pytest.raises(ValueError, match=r'threshold must be at most .* 1e\+20'):
    budget.sparse_vector_lattice(ok, threshold=1e20)
