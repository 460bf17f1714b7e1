"""Tests for tff_brats.privacy.randomness.

Statistical tests state their flake odds; thresholds are set so that a
correct sampler fails less than about once in a million runs.
"""

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


def test_ordered_by_sorts_and_breaks_ties_uniformly():
  # Keys [5, 1, 5, 1]: positions 1 and 3 come first in either order, then
  # 0 and 2: four orders, equally likely.
  keys = tf.constant([5, 1, 5, 1], tf.int32)
  order_of = tf.function(lambda seed: randomness.ordered_by(keys, seed))
  counts = {}
  for i in range(4000):
    order = tuple(order_of(tf.constant([i, 3], tf.int64)).numpy())
    counts[order] = counts.get(order, 0) + 1
  assert set(counts) == {(1, 3, 0, 2), (3, 1, 0, 2), (1, 3, 2, 0), (3, 1, 2, 0)}
  # Chi-square over the four orders: flake odds 1e-6.
  assert stats.chisquare(list(counts.values())).pvalue > 1e-6


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
