"""Tests for tff_brats.privacy.randomness.

Statistical tests state their flake odds; thresholds are set so that a
correct sampler fails less than about once in a million runs.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from tff_brats.privacy import randomness

_SEED = tf.constant([12, 34], tf.int64)
# Chi-square / KS tests reject at this p-value: flake odds 1e-6 each.
_P_MIN = 1e-6


def _repeat(fn, runs):
  """Sums fn(seed) over `runs` distinct seeds, in one graph loop."""

  @tf.function
  def loop():
    first = fn(tf.constant([0, 99], tf.int64))

    def body(i, total):
      seed = tf.stack([tf.cast(i, tf.int64), tf.constant(99, tf.int64)])
      return i + 1, total + fn(seed)

    return tf.while_loop(
      lambda i, _: i < runs,
      body,
      (tf.constant(1), first),
      parallel_iterations=32,
    )[1]

  return loop().numpy()


# ------------------------------------------------------------------ seeds ----


def test_fresh_seed_differs_on_every_call():
  seeds = {tuple(randomness.fresh_seed().numpy()) for _ in range(5)}
  assert len(seeds) == 5

  @tf.function
  def draw():
    return randomness.fresh_seed()

  assert tuple(draw().numpy()) != tuple(draw().numpy())


def test_fresh_seed_ignores_the_global_seed():
  # With a global seed, unseeded ops in two traced functions repeat each
  # other (why the mechanisms do not use them); fresh_seed does not.
  try:
    tf.random.set_seed(0)

    def unseeded():
      return tf.random.uniform([2], maxval=2**62, dtype=tf.int64)

    first = tf.function(unseeded)().numpy()
    second = tf.function(unseeded)().numpy()
    np.testing.assert_array_equal(first, second)
    a = tf.function(randomness.fresh_seed)().numpy()
    b = tf.function(randomness.fresh_seed)().numpy()
    assert tuple(a) != tuple(b)
  finally:
    tf.random.set_seed(None)


@pytest.mark.parametrize(
  'seed', [3, 2.5, 'ab', [1, 2, 3], [[1, 2]], np.array([1.0, 2.0]), [True]]
)
def test_as_seed_rejects(seed):
  with pytest.raises(ValueError, match='seed must be an int64 tensor of shape'):
    randomness.as_seed(seed)


def test_as_seed_accepts_pairs():
  for seed in ([1, 2], np.array([1, 2], np.int32), tf.constant([1, 2])):
    got = randomness.as_seed(seed)
    assert got.dtype == tf.int64
    np.testing.assert_array_equal(got.numpy(), [1, 2])


# --------------------------------------------------------------- uniforms ----


def test_open_uniform_grid_is_open_and_symmetric():
  u = randomness.open_uniform([200_000], _SEED).numpy()
  assert u.min() > 0.0 and u.max() < 1.0
  # (2i + 1)·2**-53: odd multiples of 2**-53.
  odd = u * 2.0**53
  np.testing.assert_array_equal(odd, np.round(odd))
  assert np.all(np.round(odd) % 2 == 1)
  # KS against U(0, 1).
  assert stats.kstest(u, 'uniform').pvalue > _P_MIN


def test_refine_completes_coarse_cells_to_the_open_grid():
  coarse = randomness.coarse_uniform([200_000], _SEED)
  fine = randomness.refine(coarse, tf.constant([5, 6], tf.int64)).numpy()
  cells = coarse.numpy().astype(np.float64)
  assert np.all(cells * 2.0**23 == np.floor(cells * 2.0**23))
  # Strictly inside the 2**-23 cell of each coarse value.
  assert np.all(fine > cells) and np.all(fine < cells + 2.0**-23)
  odd = fine * 2.0**53
  assert np.all(np.round(odd) % 2 == 1)
  assert stats.kstest(fine, 'uniform').pvalue > _P_MIN


def test_cells_below_and_from():
  p = tf.constant(0.3, tf.float64)
  below = float(randomness.cells_below(p))
  above = float(randomness.cells_from(p))
  step = 2.0**-23
  # Cells [k·step, (k + 1)·step) entirely below p: k·step < below.
  assert below <= 0.3 and below + step > 0.3
  assert above >= 0.3 and above - step < 0.3
  assert below * 2**23 == math.floor(0.3 * 2**23)


# ---------------------------------------------------------------- laplace ----


def test_laplace_matches_the_distribution():
  draws = randomness.laplace([200_000], 2.5, _SEED).numpy()
  assert draws.dtype == np.float64
  assert stats.kstest(draws, stats.laplace(scale=2.5).cdf).pvalue > _P_MIN
  # Bounded by 52·ln 2 scales (grid of the uniforms), never infinite.
  assert np.abs(draws).max() <= 2.5 * 52 * math.log(2)


def test_laplace_from_uniform_is_odd_around_one_half():
  u = tf.constant([0.5 - 0.25, 0.5 + 0.25, 2.0**-53], tf.float64)
  got = randomness.laplace_from_uniform(u, 2.0).numpy()
  # F⁻¹(1/4) = 2·log(1/2) = -F⁻¹(3/4).
  np.testing.assert_allclose(got[:2], [2 * math.log(0.5), -2 * math.log(0.5)])
  np.testing.assert_allclose(got[2], 2.0 * math.log(2.0**-52))


def test_laplace_survival_by_hand():
  t = tf.constant([-1.0, 0.0, 2.0], tf.float64)
  got = randomness.laplace_survival(t, 0.5).numpy()
  np.testing.assert_allclose(
    got, [1 - 0.5 * math.exp(-2), 0.5, 0.5 * math.exp(-4)], rtol=1e-15
  )


# ----------------------------------------------------- bernoulli_positions ----


def test_bernoulli_positions_are_sorted_distinct_and_in_range():
  positions, complete = randomness.bernoulli_positions(
    100_000, tf.constant(0.3, tf.float64), _SEED
  )
  positions = positions.numpy()
  assert bool(complete)
  assert np.all(np.diff(positions) > 0)
  assert positions.min() >= 0 and positions.max() < 100_000
  # Count ~ Binomial(1e5, 0.3): sd 145; 6 sd, flake odds 2e-9.
  assert abs(positions.size - 30_000) < 6 * 145


def test_bernoulli_positions_edge_probabilities():
  empty, complete = randomness.bernoulli_positions(
    50, tf.constant(0.0, tf.float64), _SEED
  )
  assert empty.shape == [0] and bool(complete)
  everything, complete = randomness.bernoulli_positions(
    50, tf.constant(1.0, tf.float64), _SEED
  )
  np.testing.assert_array_equal(everything.numpy(), np.arange(50))
  assert bool(complete)


def test_bernoulli_positions_are_independent_bernoulli():
  size, p, runs = 6, 0.35, 20_000

  def pattern_counts(seed):
    positions, _ = randomness.bernoulli_positions(
      size, tf.constant(p, tf.float64), seed
    )
    code = tf.reduce_sum(
      tf.bitwise.left_shift(tf.ones_like(positions), positions)
    )
    return tf.one_hot(code, 2**size, dtype=tf.int32)

  counts = _repeat(pattern_counts, runs)
  patterns = np.array(list(itertools.product([0, 1], repeat=size)))[:, ::-1]
  k = patterns.sum(axis=1)
  expected = runs * p**k * (1 - p) ** (size - k)
  # All 64 inclusion patterns have their product probabilities.
  assert stats.chisquare(counts, expected).pvalue > _P_MIN


# ---------------------------------------------------------- uniform_subset ----


@pytest.mark.parametrize('margin', [None, 0.0])
def test_uniform_subset_is_uniform_with_exact_count(margin):
  # margin 0 sends most calls through the exact fallback.
  size, count, runs = 5, 2, 20_000
  kwargs = (
    {} if margin is None else {'margin_deviations': 0.0, 'margin_offset': 0.0}
  )

  def subset_counts(seed):
    mask = randomness.uniform_subset(size, count, seed, **kwargs)
    code = tf.reduce_sum(tf.where(mask, 2 ** tf.range(size), 0))
    return tf.one_hot(code, 2**size, dtype=tf.int32)

  counts = _repeat(subset_counts, runs)
  subsets = [
    sum(2**i for i in c) for c in itertools.combinations(range(size), count)
  ]
  # Nothing but subsets of exactly `count`.
  assert counts[subsets].sum() == runs
  assert stats.chisquare(counts[subsets]).pvalue > _P_MIN


def test_uniform_subset_large_counts():
  for size, count in [
    (100_000, 37_000),
    (100_000, 99_999),
    (1000, 0),
    (7, 7),
    (7, 9),
  ]:
    mask = randomness.uniform_subset(size, count, _SEED).numpy()
    assert mask.shape == (size,)
    assert mask.sum() == min(count, size)


def test_uniform_subset_marginals_are_flat():
  mask = randomness.uniform_subset(200_000, 50_000, _SEED).numpy()
  # Kept per block of 20,000 positions: hypergeometric, sd about 61.
  per_block = mask.reshape(10, -1).sum(axis=1)
  assert np.all(np.abs(per_block - 5000) < 6 * 61)


def test_chunk_probability_meets_its_bound():
  kappa = float(
    randomness.chunk_probability(1000, 100_000, tf.constant(0.5, tf.float64))
  )
  mean = kappa * 100_000 * 0.5
  assert math.exp(-((mean - 1000) ** 2) / (2 * mean)) <= 1e-12 * (1 + 1e-9)
  assert kappa < 0.03
  assert (
    float(randomness.chunk_probability(10, 20, tf.constant(0.5, tf.float64)))
    == 1.0
  )
