"""Tests for tff_brats.privacy.sparse_vector.

Statistical tests state their flake odds: thresholds are set so that a
correct mechanism fails less than about once in a million runs. Many calls
run inside one graph loop (`_repeat`), each with its own explicit seed.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from tff_brats import mechanisms
from tff_brats.privacy import budget
from tff_brats.privacy import sparse_vector

# Chi-square / KS tests reject at this p-value: flake odds 1e-6 each.
_P_MIN = 1e-6


def _repeat(fn, runs, stream=99):
  """Sums fn(seed) over `runs` distinct explicit seeds, in one graph loop."""

  def seed_of(i):
    return tf.stack([tf.cast(i, tf.int64), tf.constant(stream, tf.int64)])

  @tf.function
  def loop():
    def body(i, total):
      return i + 1, total + fn(seed_of(i))

    return tf.while_loop(
      lambda i, _: i < runs,
      body,
      (tf.constant(1), fn(seed_of(0))),
      parallel_iterations=32,
    )[1]

  return loop().numpy()


def _svt(values, seed, *, steps=None, prefix_fraction=None, **params):
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

# A small case where the coordinates pass with clearly different
# probabilities (about 0.1, 0.25, 0.65, 0.85: query noise scale 0.3 and
# τ = 0.6), the undecided band (tests that need the value) is wide and
# many prefix coordinates fail: exercises every path of the implementation.
_SMALL = dict(
  shared_count=2,
  clip_bound=1.0,
  threshold=0.6,
  selection_epsilon=18.6,
  release_epsilon=1.0,
)
_SMALL_VALUES = np.array([0.1, 0.4, -0.7, 1.5], np.float32)


def _exact_released_set_probabilities(values, params):
  """P(released set) of the sequential SVT, integrating over ρ."""
  c = params['shared_count']
  scales = budget.sparse_vector_budget(
    shared_count=c,
    clip_bound=params['clip_bound'],
    selection_epsilon=params['selection_epsilon'],
    release_epsilon=params['release_epsilon'],
  )
  size = len(values)
  magnitude = np.minimum(np.abs(values), params['clip_bound'])
  rho = np.linspace(-60, 60, 240_001) * scales.threshold_scale
  weight = stats.laplace(scale=scales.threshold_scale).pdf(rho)
  weight /= weight.sum()
  t = params['threshold'] + rho[:, None] - magnitude[None, :]
  tail = 0.5 * np.exp(-np.abs(t) / scales.query_scale)
  p = np.where(t >= 0, tail, 1.0 - tail)  # P(pass) per ρ and coordinate
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

  return _repeat(one_hot_set, runs)


@pytest.mark.slow
@pytest.mark.parametrize('prefix_fraction', [None, 1.0, 0.5, 0.15])
def test_released_set_has_the_sequential_law(prefix_fraction):
  # Every way of computing the scan (all queries at once, a prefix that
  # usually holds the stop, a prefix that usually does not) must give the
  # law of the sequential algorithm (first c passes of a random order),
  # computed exactly here by enumeration and integration over ρ.
  runs = 20_000
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
        tf.cast(tf.not_equal(nonzero, report['released']), tf.int32),
        tf.cast(tf.equal(nonzero, count), tf.int32),
        nonzero,
      ]
    )

  runs = 300
  over, mismatched, exactly_c, total = _repeat(stats_of, runs)
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

  totals = _repeat(released, runs)
  counts, duplicates, reported = totals[:size], totals[size], totals[-1]
  assert duplicates == 0
  # About 100 of 200 pass in most calls: nearly always the stop at c = 10.
  assert 9.9 * runs <= reported <= 10 * runs
  # Uniform over positions: chi-square, flake odds 1e-6.
  assert stats.chisquare(counts).pvalue > _P_MIN


# ---------------------------------------------------------- the noise ----


def test_released_values_have_laplace_noise_of_the_stated_scale():
  # Release scale 2cγ/ε3 = 0.05 with c = N: every passing value released.
  size = 20_000
  rng = np.random.default_rng(5)
  values = rng.uniform(-0.5, 0.5, size).astype(np.float32)
  scale = 0.05
  params = dict(
    shared_count=size,
    clip_bound=1.0,
    threshold=0.0,
    selection_epsilon=1.0,
    release_epsilon=2 * size * 1.0 / scale,
  )
  release, report = _svt(values, tf.constant([1, 2], tf.int64), **params)
  release = release.numpy()
  released = release != 0
  assert released.sum() == int(report['released']) > 5000
  noise = release[released].astype(np.float64) - values[released]
  n = noise.size
  # Laplace(b): mean 0, sd √2·b; |noise| ~ Exp(b), mean b, sd b. 6 standard
  # errors each: flake odds 2e-9.
  assert abs(noise.mean()) < 6 * math.sqrt(2) * scale / math.sqrt(n)
  assert abs(np.abs(noise).mean() - scale) < 6 * scale / math.sqrt(n)
  # The whole distribution (clipping at ±1 is 5e-7 away): flake odds 1e-6.
  assert stats.kstest(noise, stats.laplace(scale=scale).cdf).pvalue > _P_MIN
  # No raw value leaks: a released value equals its input only if its noise
  # rounds to 0 at float32 (expected 3e-3 cases here; P(>= 2) < 5e-6).
  assert (release[released] == values[released]).sum() <= 1


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

  total, total_abs, _ = _repeat(rho, runs)
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
  np.testing.assert_allclose(
    release.numpy(), [10.0, -6.0, 0.5, 10.0], atol=1e-3
  )


# ------------------------------------------------------------ the audit ----

# Neighbouring updates of N = 2 values (c = 1) that differ in one
# coordinate within the clip range, with the same n.
_AUDIT_GAMMA = 1.0
_AUDIT_PAIR = (
  np.array([0.9, -0.2], np.float32),
  np.array([-0.3, -0.2], np.float32),
)
_AUDIT_CLAIM = dict(
  shared_fraction=0.5,
  clip_bound=_AUDIT_GAMMA,
  selection_epsilon=1.0,
  release_epsilon=1.0,
  threshold=0.3,
  normalize_by_steps=False,
)
# Released values are bucketed at these edges (±γ are buckets of their own).
_EDGES = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], np.float32)
# Every event's confidence intervals hold with probability 1 - 1e-7 / 17.
_AUDIT_ALPHA = 1e-7


def _event_counts(privatize_fn, values, runs):
  """Counts of (released coordinate, bucket of its value) over many calls.

  Event 0 is "nothing released"; then 1 + coordinate·8 + bucket, with
  buckets: y = -γ, (-γ, -0.5], (-0.5, 0], (0, 0.5], (0.5, γ), y = γ and two
  unused ones.
  """
  update = tf.constant(values)

  def one_hot_event(seed):
    release = privatize_fn(update, seed)
    released = tf.not_equal(release, 0.0)
    index = tf.argmax(tf.cast(released, tf.int32), output_type=tf.int32)
    value = release[index]
    bucket = tf.where(
      value <= -_AUDIT_GAMMA,
      0,
      tf.where(
        value >= _AUDIT_GAMMA,
        5,
        tf.searchsorted(_EDGES[1:-1], tf.reshape(value, [1]), side='left')[0]
        + 1,
      ),
    )
    event = tf.where(tf.reduce_any(released), 1 + index * 8 + bucket, 0)
    return tf.one_hot(event, 17, dtype=tf.int32)

  return _repeat(one_hot_event, runs, stream=7)


def _audit(privatize_fn, claimed_epsilon, runs):
  """Largest lower confidence bound on an event's probability ratio.

  For each event, Clopper–Pearson intervals (two-sided, level α / events)
  bound its probability under either neighbour; a ratio bound is violated
  when the lower bound of one side exceeds e^ε times the upper bound of the
  other. Returns (worst ratio lower bound, point estimate of the largest
  ratio among events seen at least 30 times on both sides).
  """
  a = _event_counts(privatize_fn, _AUDIT_PAIR[0], runs)
  b = _event_counts(privatize_fn, _AUDIT_PAIR[1], runs)
  level = _AUDIT_ALPHA / a.size

  def interval(k):
    lower = stats.beta.ppf(level / 2, k, runs - k + 1) if k else 0.0
    upper = stats.beta.ppf(1 - level / 2, k + 1, runs - k) if k < runs else 1.0
    return lower, upper

  worst, estimate = 0.0, 1.0
  for ka, kb in zip(a, b, strict=True):
    (la, ua), (lb, ub) = interval(ka), interval(kb)
    worst = max(worst, la / ub, lb / ua)
    if ka >= 30 and kb >= 30:
      estimate = max(estimate, ka / kb, kb / ka)
  return worst / math.exp(claimed_epsilon), estimate


def _mechanism_fn(mechanism):
  def privatize(update, seed):
    release, _ = mechanism.privatize(update, 1, seed=seed)
    return release

  return privatize


@pytest.mark.slow
def test_audit_svt_respects_its_epsilon():
  mechanism = mechanisms.SparseVector(**_AUDIT_CLAIM)
  violation, estimate = _audit(
    _mechanism_fn(mechanism), mechanism.epsilon_per_round, runs=30_000
  )
  # No event's ratio is significantly above e^(ε + ε3) = e² (false alarm
  # odds below 1e-7). `estimate`, the largest observed ratio, is about 2.
  assert violation <= 1.0, (violation, estimate)


@pytest.mark.slow
@pytest.mark.parametrize('flaw', ['raw_values', 'understated_budget'])
def test_audit_catches_broken_mechanisms(flaw):
  # The audit has the power to catch the reference implementation's known
  # flaws (NVFlare issues #343 and #4470): values released without their
  # noise, and a budget reported as something it is not.
  claim = mechanisms.SparseVector(**_AUDIT_CLAIM)
  if flaw == 'raw_values':
    honest = _mechanism_fn(claim)

    def broken(update, seed):
      release = honest(update, seed)
      return tf.where(tf.not_equal(release, 0.0), update, 0.0)

  else:
    # Runs with 20 times the release budget while claiming the original.
    broken = _mechanism_fn(
      mechanisms.SparseVector(**{**_AUDIT_CLAIM, 'release_epsilon': 20.0})
    )
  violation, _ = _audit(broken, claim.epsilon_per_round, runs=5000)
  assert violation > 1.0
