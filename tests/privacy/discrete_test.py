"""Tests for tff_brats.privacy.discrete: exact laws of the integer samplers.

Each sampler's output is compared with its exact probability mass function
(closed forms written out here) by a chi-square test at p > 1e-6: a correct
sampler fails less than once in a million runs. Small scales make every
slow path (whole parts, later CKS steps, rejections) run often.
"""

import math

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from tff_brats.privacy import discrete

_P_MIN = 1e-6
_SEED = tf.constant([11, 5], tf.int64)


def _chisquare(counts, probabilities):
  """Chi-square p-value, pooling cells expected below 5 into one."""
  counts = np.asarray(counts, float)
  expected = np.asarray(probabilities, float) * counts.sum()
  rare = expected < 5
  observed = np.append(counts[~rare], counts[rare].sum())
  expected = np.append(expected[~rare], expected[rare].sum())
  if expected[-1] == 0:
    assert observed[-1] == 0
    observed, expected = observed[:-1], expected[:-1]
  return stats.chisquare(observed, expected * observed.sum() / expected.sum())


def _graph(sampler, *args, **kwargs):
  """Runs `sampler` once in a graph (its loops are much faster than eager)."""
  return tf.function(lambda: sampler(*args, **kwargs))()


def _geometric_pmf(a, values):
  q = math.exp(-1.0 / a)
  return np.array([(1 - q) * q**v for v in values])


# --------------------------------------------------------------- by hand ----


def test_scaled_ratio_by_hand():
  # 3·2^23 / 7 = 3595117.714…: quotient 3595117, remainder 5.
  quotient, remainder = discrete.scaled_ratio(
    tf.constant([3, 0, 6], tf.int64), tf.constant(7, tf.int64)
  )
  assert quotient.numpy().tolist() == [3595117, 0, 7190235]
  assert remainder.numpy().tolist() == [5, 0, 3]
  # Near the largest scale: m = a - 1 = 2^48 - 1 gives ⌊2^23 - 2^-25⌋.
  big = discrete.MAX_SCALE
  quotient, remainder = discrete.scaled_ratio(
    tf.constant([big - 1], tf.int64), tf.constant(big, tf.int64)
  )
  assert quotient.numpy().tolist() == [2**23 - 1]
  assert remainder.numpy().tolist() == [big - 2**23]


def test_first_step_cut_by_hand():
  # ⌈m·2^23/a⌉: 3/7 -> 3595118; 0 -> 0; m >= a never settles (2^23).
  cuts = [
    int(discrete.first_step_cut(tf.constant(m, tf.int64), 7)) for m in (3, 0, 7)
  ]
  assert cuts == [3595118, 0, 2**23]
  # Exact multiples are not rounded up: 7·2^20 / 7.
  assert (
    int(discrete.first_step_cut(tf.constant(2**20 * 7, tf.int64), 2**23 * 7))
    == 2**20
  )


def test_exp_one_table_by_hand():
  # z in [0, 7!): the run stops at the least j >= 2 with z mod j! != 0 and
  # succeeds when j is odd. z = 1: j = 2 (fails); z = 2: j = 3; z = 6:
  # j = 4; z = 24: j = 5; z = 120: j = 6; z = 720: j = 7; z = 0 goes on.
  table = discrete._EXP_ONE
  assert len(table) == 5040
  assert [table[z] for z in (0, 1, 2, 6, 24, 120, 720)] == [
    False,
    False,
    True,
    False,
    True,
    False,
    True,
  ]
  # Stops at j: 7!/(j-1)! - 7!/j! values of z; odd j = 3, 5, 7:
  # (2520 - 840) + (210 - 42) + (7 - 1) = 1854.
  assert sum(table) == 1854


def test_samplers_take_empty_inputs():
  empty = tf.zeros([0], tf.int64)
  for result in (
    _graph(discrete.bernoulli_exp, empty, 3, _SEED),
    _graph(discrete.truncated_geometric, empty, 3, _SEED),
    _graph(discrete.geometric, [0], 3, _SEED),
    _graph(discrete.uniform_below, empty, _SEED),
  ):
    assert result.shape == (0,)


# ------------------------------------------------------------- the laws ----


def test_runs_law():
  # min(V, 4) with P(V >= v) = e^-v: P(v) = e^-v - e^-(v+1) below 4.
  values = _graph(
    discrete._runs, tf.fill([60_000], tf.constant(4, tf.int64)), _SEED
  ).numpy()
  pmf = [math.exp(-v) - math.exp(-v - 1) for v in range(4)] + [math.exp(-4)]
  assert _chisquare(np.bincount(values, minlength=5), pmf).pvalue > _P_MIN


def test_uniform_below_is_uniform():
  bounds = tf.fill([60_000], tf.constant(7, tf.int64))
  values = _graph(discrete.uniform_below, bounds, _SEED).numpy()
  assert values.min() >= 0 and values.max() <= 6
  counts = np.bincount(values, minlength=7)
  assert _chisquare(counts, np.full(7, 1 / 7)).pvalue > _P_MIN


def test_uniform_below_large_bounds_stay_in_range():
  # Bounds near 2^62 reject about half the words: the redraw loop runs.
  bound = (1 << 62) - (1 << 61) + 1
  values = _graph(
    discrete.uniform_below,
    tf.fill([20_000], tf.constant(bound, tf.int64)),
    _SEED,
  ).numpy()
  assert values.min() >= 0 and values.max() < bound
  # Halves of the range equally likely: 6 standard errors, odds 2e-9.
  high = (values >= bound // 2).mean()
  assert abs(high - 0.5) < 6 * 0.5 / math.sqrt(values.size)


@pytest.mark.parametrize(
  'm,a,first_k',
  [
    (0, 3, 1),  # exp(0) = 1
    (1, 3, 1),
    (5, 3, 1),  # a whole part and a fraction
    (9, 3, 1),  # whole only: exp(-3)
    (2, 7, 2),  # continues CKS from K = 2 (its first draw succeeded)
    (6, 7, 3),  # from K = 3
  ],
)
def test_bernoulli_exp_has_its_probability(m, a, first_k):
  runs = 50_000
  result = _graph(
    discrete.bernoulli_exp,
    tf.fill([runs], tf.constant(m, tf.int64)),
    a,
    _SEED,
    first_k=tf.fill([runs], tf.constant(first_k, tf.int64)),
  ).numpy()
  gamma = m / a
  if first_k == 1:
    p = math.exp(-gamma)
  else:
    # Given that the first K - 1 draws succeeded, CKS Algorithm 1 returns
    # "K odd" for the K at which the first draw fails: P(stop at K) =
    # (1 - γ/K)·Π_{j<K}(γ/j) / Π_{j<first_k}(γ/j).
    p, weight = 0.0, 1.0
    for k in range(first_k, first_k + 40):
      stop = weight * (1 - gamma / k)
      p += stop if k % 2 else 0.0
      weight *= gamma / k
  if p in (0.0, 1.0):
    assert result.mean() == p
    return
  # Binomial, 6 standard deviations: odds 2e-9.
  assert abs(result.mean() - p) < 6 * math.sqrt(p * (1 - p) / runs)


def test_exp_bernoulli_matches_bernoulli_exp_law():
  # The first step from a given uniform 23-bit prefix, over m on both
  # sides of a (m >= a goes through bernoulli_exp afresh).
  a = 5
  m = np.tile(np.arange(0, 12), 5_000)
  prefix = np.random.default_rng(7).integers(0, 2**23, m.size)
  result = _graph(
    discrete.exp_bernoulli,
    tf.constant(m, tf.int64),
    a,
    _SEED,
    tf.constant(prefix, tf.int64),
  ).numpy()
  for value in range(12):
    got = result[m == value]
    p = math.exp(-value / a)
    assert abs(got.mean() - p) < 6 * math.sqrt(p * (1 - p) / got.size + 1e-12)


def test_geometric_law():
  a = 2
  values = _graph(discrete.geometric, [50_000], a, _SEED).numpy()
  support = np.arange(0, 60)
  counts = np.bincount(values, minlength=60)[:60]
  # P(X >= 60) = e^-30 per value: below 1e-8 for the sample.
  assert values.max() < 60
  assert _chisquare(counts, _geometric_pmf(a, support)).pvalue > _P_MIN


@pytest.mark.parametrize('m,a', [(4, 3), (9, 2), (1, 5), (200, 3)])
def test_truncated_geometric_law(m, a):
  # m <= a: uniform candidates; m > a: geometric candidates.
  values = _graph(
    discrete.truncated_geometric,
    tf.fill([30_000], tf.constant(m, tf.int64)),
    a,
    _SEED,
  ).numpy()
  assert values.min() >= 0 and values.max() < m
  if m == 1:
    return  # X < 1 is X = 0
  support = np.arange(min(m, 80))
  pmf = _geometric_pmf(a, support) / _geometric_pmf(a, np.arange(m)).sum()
  counts = np.bincount(values, minlength=m)[: len(support)]
  assert _chisquare(counts, pmf).pvalue > _P_MIN


def test_discrete_laplace_law():
  a = 2
  values = _graph(discrete.discrete_laplace, [50_000], a, _SEED).numpy()
  q = math.exp(-1 / a)
  support = np.arange(-50, 51)
  pmf = (1 - q) / (1 + q) * q ** np.abs(support)
  counts = np.array([(values == k).sum() for k in support])
  # P(|X| > 50) = 2e^-25.5/(1 + q) per value: below 1e-6 for the sample.
  assert np.abs(values).max() <= 50
  assert _chisquare(counts, pmf).pvalue > _P_MIN


@pytest.mark.parametrize('m0,m1', [(3, 1), (0, 4), (7, 9)])
@pytest.mark.parametrize('positive_values', [True, False])
def test_signed_tail_has_the_discrete_laplace_law(m0, m1, positive_values):
  # (B, [X >= m_B], X where smaller) against DL(a) = (1 - 2B)·X with
  # (B = 1, X = 0) rejected: P(B = 0, X = x) ∝ q^x, P(B = 1, X = x) ∝ q^x
  # for x >= 1. Cells: (sign, X) for X < m_B, and (sign, beyond).
  a, size = 3, 12_000
  q = math.exp(-1 / a)

  def m_at(positions, negative):
    return tf.where(
      negative,
      tf.fill(tf.shape(positions), tf.constant(m1, tf.int64)),
      tf.fill(tf.shape(positions), tf.constant(m0, tf.int64)),
    )

  tail = _graph(
    discrete.signed_tail,
    size,
    a,
    (tf.constant(m0, tf.int64), tf.constant(m1, tf.int64)),
    m_at,
    _SEED,
    positive_values=positive_values,
  )
  negative = tail.negative.numpy().copy()
  beyond = tail.settled.numpy().copy()
  below = np.zeros(size, np.int64)
  positions = tail.positions.numpy()
  negative[positions] = tail.sub_negative.numpy()
  beyond[positions] = tail.sub_beyond.numpy()
  below[positions] = tail.sub_below.numpy()
  norm = (1 + q) / (1 - q)  # Σ_k q^|k| over the integers
  cells, probabilities = [], []
  if positive_values:
    # Settled elements are beyond; a negative X < m1 is never 0.
    assert not np.any(negative & ~beyond & (below == 0))
    for sign, m in ((0, m0), (1, m1)):
      first = 1 if sign else 0
      for x in range(first, m):
        cells.append(np.sum((negative == sign) & ~beyond & (below == x)))
        probabilities.append(q**x / norm)
      cells.append(np.sum((negative == sign) & beyond))
      probabilities.append(q ** max(m, first) / (1 - q) / norm)
  else:
    # Only (B, [X >= m_B]); X is not drawn (where m_B >= a) or not kept.
    for sign, m in ((0, m0), (1, m1)):
      first = 1 if sign else 0
      tail = q ** max(m, first) / (1 - q) / norm
      cells += [
        np.sum((negative == sign) & ~beyond),
        np.sum((negative == sign) & beyond),
      ]
      probabilities += [q**first / (1 - q) / norm - tail, tail]
  assert sum(cells) == size
  assert _chisquare(cells, probabilities).pvalue > _P_MIN
