"""Tests for tff_brats.privacy.sparse_vector.

Statistical tests state their flake odds: thresholds are set so that a
correct mechanism fails less than about once in a million runs. Many calls
run inside one graph loop (`testing_utils.repeated_sum`), each with its
own explicit seed. The black-box audit is in `sparse_vector_audit_test.py`.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from tests import testing_utils
from tff_brats.privacy import budget
from tff_brats.privacy import sparse_vector

# Chi-square / KS tests reject at this p-value: flake odds 1e-6 each.
_P_MIN = 1e-6


def _svt(values, seed, *, steps=None, prefix_fraction=None, **params):
  params = dict(params)
  return sparse_vector.sparse_vector(
    tf.constant(values, tf.float32),
    steps,
    seed=seed,
    prefix_fraction=prefix_fraction,
    **params,
  )


# ------------------------------------------------------------ budgets ----


def test_budget_by_hand():
  scales = budget.sparse_vector_budget(
    shared_count=4, clip_bound=0.5, selection_epsilon=3.0, release_epsilon=2.0
  )
  # (2c)^(2/3) = 8^(2/3) = 4: ε1 = 3/5, ε2 = 12/5.
  assert scales.threshold_epsilon == pytest.approx(0.6)
  assert scales.query_epsilon == pytest.approx(2.4)
  assert scales.threshold_scale == pytest.approx(0.5 / 0.6)
  assert scales.query_scale == pytest.approx(2 * 4 * 0.5 / 2.4)
  assert scales.release_scale == pytest.approx(2 * 4 * 0.5 / 2.0)


# ---------------------------------------------- the released set's law ----

# A small case on a coarse lattice (resolution_bits=2: Δ = 1/4, G = 4), where
# the coordinates pass with clearly different probabilities, the noise
# scales are a few lattice steps (a1 = 1, a2 = 2), so the samplers' slow
# paths (later CKS steps, rejections) run often, and many prefix
# coordinates fail: exercises every path of the implementation. A tiny ε3
# saturates every release at ±γ, so no released value is 0 (which would
# look unreleased; P(|noise| < 2G) = 1e-6 per value).
_SMALL = dict(
  shared_count=2,
  clip_bound=1.0,
  threshold=0.6,
  selection_epsilon=18.6,
  release_epsilon=1e-6,
  resolution_bits=2,
)
_SMALL_VALUES = np.array([0.1, 0.4, -0.7, 1.5], np.float32)


def _dl_survival(k, a):
  """P(ν >= k) for ν ~ DL(a), P(ν) ∝ exp(-|ν|/a), integers k (array)."""
  q = math.exp(-1.0 / a)
  k = np.asarray(k, float)
  tail = np.exp(-np.abs(k) / a) / (1.0 + q)  # P(ν >= k) for k >= 1
  return np.where(k >= 1, tail, 1.0 - q * np.exp(-np.abs(k) / a) / (1.0 + q))


def _exact_released_set_probabilities(values, params):
  """P(released set) of the sequential SVT on the lattice, summing over ρ."""
  c = params['shared_count']
  scales = budget.sparse_vector_budget(
    shared_count=c,
    clip_bound=params['clip_bound'],
    selection_epsilon=params['selection_epsilon'],
    release_epsilon=params['release_epsilon'],
  )
  lattice = budget.sparse_vector_lattice(
    scales, params['threshold'], params['resolution_bits']
  )
  size = len(values)
  x = np.clip(np.round(values / lattice.spacing), -lattice.bound, lattice.bound)
  a1, a2 = lattice.threshold_scale, lattice.query_scale
  rho = np.arange(-80 * a1, 80 * a1 + 1)
  q1 = math.exp(-1.0 / a1)
  weight = (1 - q1) / (1 + q1) * q1 ** np.abs(rho)
  k = lattice.threshold + rho[:, None] - np.abs(x)[None, :]
  p = _dl_survival(k, a2)  # P(pass) per ρ and coordinate
  probs = np.zeros(2**size)
  for passes in itertools.product([0, 1], repeat=size):
    likelihood = np.prod(np.where(passes, p, 1.0 - p), axis=1) @ weight
    passing = [i for i in range(size) if passes[i]]
    kept = list(itertools.combinations(passing, min(c, len(passing))))
    for subset in kept:
      probs[sum(2 ** (size - 1 - i) for i in subset)] += likelihood / len(kept)
  return probs


def _released_set_counts(values, params, runs, prefix_fraction):
  size = len(values)
  bits = tf.constant([2 ** (size - 1 - i) for i in range(size)])

  def one_hot_set(seed):
    release, _ = _svt(values, seed, prefix_fraction=prefix_fraction, **params)
    code = tf.reduce_sum(tf.where(tf.not_equal(release, 0.0), bits, 0))
    return tf.one_hot(code, 2**size, dtype=tf.int32)

  return testing_utils.repeated_sum(one_hot_set, runs)


@pytest.mark.slow
@pytest.mark.parametrize('prefix_fraction', [None, 0.45, 0.15])
def test_released_set_has_the_sequential_law(prefix_fraction):
  # Every way of computing the scan must give the law of the sequential
  # algorithm (first c passes of a random order), computed exactly here by
  # enumeration and integration over ρ: the automatic choice (here κ = 1,
  # all queries at once: c = 2 of N = 4), a prefix that often holds the
  # stop (κ = 0.45) and one that usually does not (κ = 0.15).
  runs = 4_000
  counts = _released_set_counts(_SMALL_VALUES, _SMALL, runs, prefix_fraction)
  probs = _exact_released_set_probabilities(_SMALL_VALUES, _SMALL)
  possible = probs > 0
  assert counts[~possible].sum() == 0
  counts, expected = counts[possible], probs[possible] * runs
  # Pool the rare sets (expected < 5) for the chi-square approximation.
  rare = expected < 5
  observed, expected = counts[~rare], expected[~rare]
  if rare.any():
    observed = np.append(observed, counts[rare].sum())
    expected = np.append(expected, probs[possible][rare].sum() * runs)
  # Flake odds 1e-6.
  assert stats.chisquare(observed, expected).pvalue > _P_MIN


# ----------------------------------------------------------- the stop ----


@pytest.mark.parametrize(
  'fraction,threshold,selection_epsilon,all_pass',
  [
    (0.1, 0.0, 1e4, True),  # tiny threshold, little noise: all pass
    (0.5, 0.0, 1e4, True),
    (1.0, 0.0, 1e4, True),
    (0.1, 0.0, 0.5, False),  # noisy: about half pass
    (0.5, 0.2, 2.0, False),
    (0.1, 1e6, 1.0, False),  # huge threshold: almost nothing passes
    (0.9, 1e6, 1.0, False),
  ],
)
def test_never_more_than_c_released(
  fraction, threshold, selection_epsilon, all_pass
):
  rng = np.random.default_rng(3)
  values = rng.uniform(0.2, 1.0, 50) * rng.choice([-1, 1], 50)
  count = budget.shared_count(fraction, 50)
  params = dict(
    shared_count=count,
    clip_bound=1.0,
    threshold=threshold,
    selection_epsilon=selection_epsilon,
    release_epsilon=1.0,
  )

  def stats_of(seed):
    release, report = _svt(values, seed, **params)
    nonzero = tf.math.count_nonzero(release, dtype=tf.int32)
    return tf.stack(
      [
        tf.cast(nonzero > count, tf.int32),
        tf.cast(nonzero > report['released'], tf.int32),
        tf.cast(tf.equal(nonzero, count), tf.int32),
        nonzero,
      ]
    )

  runs = 300
  over, mismatched, exactly_c, total = testing_utils.repeated_sum(
    stats_of, runs
  )
  assert over == 0
  assert mismatched == 0
  if all_pass:
    assert exactly_c == runs
  if threshold >= 1e6:
    # P(a coordinate passes) <= exp(-(τ - γ)/b) for b << τ: nothing.
    assert total == 0


def test_released_positions_are_distinct_and_uniform():
  # Equal magnitudes: every position passes with the same probability, so
  # each is released equally often. Distinct: as many non-zero values as
  # reported releases (sampling with replacement would give fewer).
  size, fraction, runs = 200, 0.05, 3000
  values = np.full(size, 0.5, np.float32) * np.tile([1, -1], size // 2)
  params = dict(
    shared_count=budget.shared_count(fraction, size),
    clip_bound=1.0,
    threshold=0.0,
    selection_epsilon=1.0,
    release_epsilon=1.0,
  )

  def released(seed):
    release, report = _svt(values, seed, **params)
    nonzero = tf.cast(tf.not_equal(release, 0.0), tf.int32)
    duplicates = report['released'] - tf.reduce_sum(nonzero)
    return tf.concat([nonzero, [duplicates], [report['released']]], axis=0)

  totals = testing_utils.repeated_sum(released, runs)
  counts, duplicates, reported = totals[:size], totals[size], totals[-1]
  assert duplicates == 0
  # About 100 of 200 pass in most calls: nearly always the stop at c = 10.
  assert 9.9 * runs <= reported <= 10 * runs
  # Uniform over positions: chi-square, flake odds 1e-6.
  assert stats.chisquare(counts).pvalue > _P_MIN


# ---------------------------------------------------------- the noise ----


def test_released_values_have_discrete_laplace_noise_of_the_stated_scale():
  # resolution_bits=4: Δ = 1/16, G = 16; release scale a3 = ⌈2cG/ε3⌉ = 1
  # lattice step with c = N: every passing value released with its noise.
  # Values w in [5/16, 8/16] (x = 16w in [5, 8]): a release is 0 (looks
  # unreleased) or clipped at 16 only if |noise| >= 5.
  size = 20_000
  rng = np.random.default_rng(5)
  values = (rng.integers(5, 9, size) / 16).astype(np.float32)
  params = dict(
    shared_count=size,
    clip_bound=1.0,
    threshold=0.0,
    selection_epsilon=1.0,
    release_epsilon=2 * size * 16,
    resolution_bits=4,
  )
  release, report = _svt(values, tf.constant([1, 2], tf.int64), **params)
  release = release.numpy()
  released = release != 0
  # P(|noise| >= 5) = 2e^-5/(1 + e^-1) = 0.0098 per value: zeros are rare.
  assert 0.98 * int(report['released']) <= released.sum()
  assert released.sum() <= int(report['released'])
  assert released.sum() > 5000
  # Every released value is on the lattice, exactly.
  steps = release[released].astype(np.float64) * 16
  np.testing.assert_array_equal(steps, np.round(steps))
  noise = (steps - values[released] * 16).astype(int)
  # DL(1) on |noise| <= 4 (the rest is at most 1% and pooled away):
  # chi-square, flake odds 1e-6.
  support = np.arange(-4, 5)
  pmf = math.exp(-1) ** np.abs(support)
  counts = np.array([(noise == k).sum() for k in support])
  assert counts.sum() > 0.97 * noise.size
  assert stats.chisquare(counts, pmf / pmf.sum() * counts.sum()).pvalue > _P_MIN


def test_large_release_noise_is_clipped_to_plus_minus_gamma():
  # Noise scale b = 2cγ/ε3 = 2e4·γ: nearly every release is ±γ, half of
  # each sign.
  size = 20_000
  values = np.full(size, 0.3, np.float32)
  release, _ = _svt(
    values,
    tf.constant([3, 4], tf.int64),
    shared_count=size,
    clip_bound=0.5,
    threshold=0.0,
    selection_epsilon=1.0,
    release_epsilon=1.0,
  )
  release = release.numpy()
  released = release[release != 0]
  assert np.all(np.abs(released) <= 0.5)
  # Unclipped with probability about γ/b = 5e-5 each: 0.5 expected here,
  # more than 6 has probability 1e-7.
  assert np.sum(np.abs(released) < 0.5) <= 6
  # P(+γ) = 1 - ½exp(-(γ - w)/b) ≈ 0.5: binomial sd; 6 sd, odds 2e-9.
  n = released.size
  assert abs((released > 0).mean() - 0.5) < 6 * 0.5 / math.sqrt(n)


def test_noisy_threshold_has_scale_gamma_over_epsilon1():
  params = dict(
    shared_count=3,
    clip_bound=0.2,
    threshold=0.1,
    selection_epsilon=1.5,
    release_epsilon=1.0,
  )
  scale = budget.sparse_vector_budget(
    shared_count=3, clip_bound=0.2, selection_epsilon=1.5, release_epsilon=1.0
  ).threshold_scale
  runs = 4000

  def rho(seed):
    _, report = _svt(np.ones(10, np.float32), seed, **params)
    rho = tf.cast(report['noisy_threshold'], tf.float64) - 0.1
    return tf.stack([rho, tf.abs(rho), rho**2])

  total, total_abs, _ = testing_utils.repeated_sum(rho, runs)
  # Mean 0 (sd √2·b) and mean |ρ| = b (sd b), 6 standard errors: 2e-9.
  assert abs(total / runs) < 6 * math.sqrt(2) * scale / math.sqrt(runs)
  assert abs(total_abs / runs - scale) < 6 * scale / math.sqrt(runs)


def test_nan_is_treated_as_zero_and_inf_is_clipped():
  values = np.array([np.nan, np.inf, -np.inf, 0.0], np.float32)
  params = dict(
    shared_count=4,
    clip_bound=1.0,
    threshold=0.5,
    selection_epsilon=1e4,
    release_epsilon=1e5,
  )
  release, report = _svt(values, tf.constant([1, 1], tf.int64), **params)
  release = release.numpy()
  assert np.all(np.isfinite(release))
  # Little noise: ±inf (clipped to ±1) pass τ = 0.5, NaN (as 0) and 0 do not.
  np.testing.assert_allclose(release, [0.0, 1.0, -1.0, 0.0], atol=1e-3)
  assert int(report['released']) == 2


def test_normalisation_by_steps_scales_the_release():
  values = np.array([30.0, -6.0, 0.5, 40.0], np.float32)
  params = dict(
    shared_count=4,
    clip_bound=1.0,
    threshold=0.01,
    selection_epsilon=1e4,
    release_epsilon=1e7,
  )
  release, _ = _svt(
    values, tf.constant([1, 1], tf.int64), steps=tf.constant(10.0), **params
  )
  # w = ΔW/10 = (3, -0.6, 0.05, 4), clipped to (1, -0.6, 0.05, 1), times 10.
  # The noise is DL(a3 = ⌈8·2^16/1e7⌉ = 1) lattice steps of Δ = 2^-16:
  # |η| <= 13 steps (2e-3 after ×10) except with probability 1.2e-6 a value.
  np.testing.assert_allclose(
    release.numpy(), [10.0, -6.0, 0.5, 10.0], atol=2e-3
  )
