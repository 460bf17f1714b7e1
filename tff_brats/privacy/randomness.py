"""Seeds and samplers for the privacy mechanisms, as traceable TensorFlow.

Every random draw of a mechanism is a *stateless* op keyed by a `[2]` int64
seed, so the whole mechanism is a pure function of (update, seed) and runs
unchanged in a `tf.function`, a TFF `tff.tensorflow.computation` or eager.

Where the seed comes from (`fresh_seed`): when no seed is given, it is read
inside the graph, at run time, on every call, from two sources combined by
XOR:

* 16 bytes of the operating system's CSPRNG (`/dev/urandom`, read by a
  `tf.data.TextLineDataset` op), and
* `tf.raw_ops.NonDeterministicInts`, TensorFlow's own entropy op.

Why not an unseeded `tf.random.uniform(..., dtype=tf.int64)` or
`tf.random.Generator.from_non_deterministic_state()`:

* Unseeded stateful random ops are only unseeded while no global seed is
  set. After `tf.random.set_seed` or `tf.keras.utils.set_random_seed` (which
  the trainers call for reproducible initialisation), every such op gets a
  fixed seed derived from the global seed and its position in the graph: two
  traces of the same function produce the *same* "random" numbers, and a
  computation that is re-instantiated every round (as TFF's runtime may do)
  would add the same noise every round.
* `tf.random.Generator` keeps its state in a `tf.Variable`, which a TFF
  computation cannot carry from one round to the next and a `tf.function`
  may only create once; the generator would have to be created per call
  from a non-deterministic state, which is `NonDeterministicInts` again.
* `NonDeterministicInts`, and every unseeded op, ultimately draws from
  `tsl::random::New64()`: a per-process Mersenne Twister seeded with one
  32-bit value from `/dev/urandom`. Its output is fresh on every call and
  ignores the global seed, but a process has only 2**32 possible streams,
  small enough to enumerate. The `/dev/urandom` bytes give each call 128
  bits of seed from the kernel's CSPRNG.

Philox (the stateless ops' generator) then expands the seed; it is a
statistically strong counter-based generator, not a cryptographic one.

A fixed seed (`privatize(..., seed=...)`) makes the noise reproducible, and
therefore predictable and replayable by anyone who knows it: use it for
tests and reproducible experiments only, never in a deployment.

Floating point: every uniform is a float64 on the grid (2i + 1)·2**-53
(symmetric about 1/2, never 0 or 1), drawn at once (`open_uniform`) or as
its top 23 bits first and the other 29 only when a decision needs them
(`coarse_uniform`, `refine`); the two give the same values' law. Laplace
noise is the inverse distribution function of such a uniform, so a draw of
scale b is bounded by 36.04·b and takes finitely many values. The
guarantee of the ideal real-valued mechanism carries over only up to these
discretisation effects (Mironov 2012, "On significance of the least
significant bits for differential privacy"), and they are not always
small: the noise grid is about b·2^-51, which for large scales b (many
shared values, small ε3) is coarser than float32's spacing near zero, so
neighbouring inputs can reach different sets of float32 outputs. The
mechanisms say so in their caveats (issue 11 tracks the exact release).
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

# Offsets folded into a call's seed, one per independent draw of a mechanism.
THRESHOLD_STREAM = 1
QUERY_STREAM = 2
RELEASE_STREAM = 3
ORDER_STREAM = 4
CHUNK_STREAM = 5
UNDECIDED_STREAM = 6
REST_QUERY_STREAM = 7
REST_ORDER_STREAM = 8
REST_VISIT_STREAM = 9

_URANDOM = '/dev/urandom'
_COARSE_BITS = 23  # random bits of a float32 uniform
_FINE_BITS = 29  # the rest of a float64 uniform's 52
_SEED_BYTES = 16

# Half a step of float64 uniforms (their grid is 2**-52): shifts the grid to
# (2k + 1)·2**-53, strictly inside (0, 1) and symmetric about 1/2.
_HALF_STEP = 2.0**-53

# Margins of binomial counts: a Binomial count exceeds its mean by more than
# 8 standard deviations + 32 with probability below 1e-12 (Bernstein's
# inequality, P(X - μ >= t) <= exp(-t² / (2σ² + 2t/3))). Missing a margin
# only costs a slower exact fallback.
_MARGIN_DEVIATIONS = 8.0
_MARGIN_OFFSET = 32.0


def fresh_seed() -> tf.Tensor:
  """A new unpredictable `[2]` int64 seed, drawn when the graph runs.

  Each run of the op (each call of the enclosing `tf.function` or TFF
  computation, on each client) reads fresh entropy; the result does not
  depend on `tf.random.set_seed`. See the module docstring.

  Returns:
    An int64 tensor of shape `[2]`.
  """
  lines = tf.data.TextLineDataset(_URANDOM, buffer_size=64)
  # A "line" of random bytes ends at a random '\n'; about 94% of them have
  # at least 16 bytes, each uniform over the 255 other byte values (127.9
  # bits in all).
  line = (
    lines.filter(lambda s: tf.strings.length(s) >= _SEED_BYTES)
    .take(1)
    .get_single_element()
  )
  os_bits = tf.io.decode_raw(
    tf.strings.substr(line, 0, _SEED_BYTES), tf.int64, little_endian=True
  )
  os_bits = tf.reshape(os_bits, [2])
  tf_bits = tf.raw_ops.NonDeterministicInts(shape=[2], dtype=tf.int64)
  return tf.bitwise.bitwise_xor(os_bits, tf_bits)


def as_seed(seed: Any) -> tf.Tensor:
  """Checks an explicit seed and returns it as an int64 `[2]` tensor.

  Args:
    seed: An integer tensor, array or sequence of shape `[2]`.

  Returns:
    The seed as an int64 tensor of shape `[2]`.

  Raises:
    ValueError: `seed` is not integer or not of shape `[2]`.
  """
  if isinstance(seed, bool | int | float | str):
    raise ValueError(
      f'seed must be an int64 tensor of shape [2] or None. Found {seed!r}.'
    )
  try:
    tensor = tf.convert_to_tensor(seed)
  except (TypeError, ValueError) as e:
    raise ValueError(
      f'seed must be an int64 tensor of shape [2] or None. Found {seed!r}.'
    ) from e
  if not tensor.dtype.is_integer or tensor.shape != [2]:
    raise ValueError(
      'seed must be an int64 tensor of shape [2] or None. Found dtype '
      f'{tensor.dtype.name} and shape {tensor.shape}.'
    )
  return tf.cast(tensor, tf.int64)


def substream(seed: tf.Tensor, stream: int) -> tf.Tensor:
  """The seed of one independent draw of a call (`stateless_fold_in`)."""
  return tf.random.experimental.stateless_fold_in(seed, stream)


def open_uniform(shape: Any, seed: tf.Tensor) -> tf.Tensor:
  """float64 uniforms on the grid (2i + 1)·2**-53, strictly inside (0, 1).

  The grid is symmetric about 1/2, so samplers built by inversion are
  exactly symmetric and never see log(0).
  """
  u = tf.random.stateless_uniform(shape, seed, dtype=tf.float64)
  return u + _HALF_STEP


def coarse_uniform(shape: Any, seed: tf.Tensor) -> tf.Tensor:
  """The top 23 bits of uniforms on the `open_uniform` grid, as float32.

  Returns k·2**-23 with k uniform in [0, 2**23): the cell [k·2**-23,
  (k + 1)·2**-23) that holds the uniform. `refine` draws the remaining 29
  bits; together they are distributed exactly as `open_uniform`. A
  decision that the cell already settles (the whole cell lies on one side
  of a boundary, see `cells_below` and `cells_from`) needs no more bits.
  """
  return tf.random.stateless_uniform(shape, seed, dtype=tf.float32)


def refine(coarse: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Completes `coarse_uniform` values to float64 uniforms on the full grid.

  Args:
    coarse: float32 values k·2**-23 from `coarse_uniform`.
    seed: A `[2]` int64 seed, not used for anything else.

  Returns:
    float64 (k·2**29 + j)·2**-52 + 2**-53 with j uniform in [0, 2**29),
    strictly inside the cell of k (exact: every value has 53 bits).
  """
  low = tf.random.stateless_uniform(
    tf.shape(coarse), seed, minval=0, maxval=1 << _FINE_BITS, dtype=tf.int64
  )
  high = tf.cast(coarse, tf.float64) * 2.0**_COARSE_BITS
  return (high * 2.0**_FINE_BITS + tf.cast(low, tf.float64)) * 2.0**-52 + (
    _HALF_STEP
  )


def cells_below(p: tf.Tensor) -> tf.Tensor:
  """float32 cut c: a coarse value u < c has its whole cell below p."""
  cells = tf.floor(tf.cast(p, tf.float64) * 2.0**_COARSE_BITS)
  return tf.cast(cells * 2.0**-_COARSE_BITS, tf.float32)


def cells_from(p: tf.Tensor) -> tf.Tensor:
  """float32 cut c: a coarse value u >= c has its whole cell at or above p."""
  cells = tf.math.ceil(tf.cast(p, tf.float64) * 2.0**_COARSE_BITS)
  return tf.cast(cells * 2.0**-_COARSE_BITS, tf.float32)


def laplace(shape: Any, scale: Any, seed: tf.Tensor) -> tf.Tensor:
  """float64 Laplace(0, scale) noise by inversion of the distribution.

  Args:
    shape: Output shape.
    scale: The Laplace scale b (scalar, > 0).
    seed: A `[2]` int64 seed.

  Returns:
    A float64 tensor of the given shape (see `laplace_from_uniform`).
  """
  return laplace_from_uniform(open_uniform(shape, seed), scale)


def laplace_from_uniform(u: tf.Tensor, scale: Any) -> tf.Tensor:
  """Laplace(0, scale) by inversion of float64 uniforms on the open grid.

  With v = u - 1/2 the draw is -scale·sign(v)·log(1 - 2|v|): symmetric,
  never infinite, bounded by scale·52·log(2) ≈ 36.04·scale.
  """
  v = u - 0.5
  scale = tf.cast(scale, tf.float64)
  return -scale * tf.sign(v) * tf.math.log1p(-2.0 * tf.abs(v))


def laplace_survival(t: tf.Tensor, scale: Any) -> tf.Tensor:
  """P(X >= t) for X ~ Laplace(0, scale), in float64."""
  t = tf.cast(t, tf.float64)
  half_tail = 0.5 * tf.exp(-tf.abs(t) / tf.cast(scale, tf.float64))
  return tf.where(t >= 0.0, half_tail, 1.0 - half_tail)


def bernoulli_positions(
  size: int, probability: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
  """The positions of an i.i.d. Bernoulli(probability) subset of [0, size).

  Positions are generated in increasing order from geometric gaps, so the
  cost is proportional to the expected count, not to `size`. A budget of
  gaps (the mean count plus 8 standard deviations plus 32) is drawn; when
  their sum falls short of `size` (probability below 1e-12) the subset is
  incomplete and `complete` is False: the caller must not use it. Whether
  it is complete depends only on the subset's size, so a complete subset
  is still exchangeable (all subsets of a given size equally likely).

  Args:
    size: The length of the index range (a Python int).
    probability: Scalar float64 in [0, 1], the inclusion probability.
    seed: A `[2]` int64 seed.

  Returns:
    `(positions, complete)`: sorted int64 positions in [0, size) and a
    scalar bool.
  """
  probability = tf.clip_by_value(tf.cast(probability, tf.float64), 0.0, 1.0)

  def draw():
    mean = probability * size
    budget = tf.cast(
      tf.math.ceil(mean + _MARGIN_DEVIATIONS * tf.sqrt(mean) + _MARGIN_OFFSET),
      tf.int64,
    )
    budget = tf.minimum(budget, size + 1)
    u = open_uniform(tf.reshape(budget, [1]), seed)
    # P(gap - 1 >= j) = P(u <= (1 - p)^j) = (1 - p)^j: geometric gaps. A
    # gap past the end of the range is capped (in float64, before the cast)
    # so the running sum cannot overflow.
    skips = tf.floor(tf.math.log(u) / tf.math.log1p(-probability))
    gaps = 1 + tf.cast(tf.minimum(skips, float(size)), tf.int64)
    ends = tf.cumsum(gaps) - 1
    count = tf.reduce_sum(tf.cast(ends < size, tf.int64))
    return ends[:count], count < budget

  def nothing():
    return tf.zeros([0], tf.int64), tf.constant(True)

  return tf.cond(probability > 0.0, draw, nothing)


def uniform_subset(
  size: tf.Tensor,
  count: tf.Tensor,
  seed: tf.Tensor,
  *,
  margin_deviations: float = _MARGIN_DEVIATIONS,
  margin_offset: float = _MARGIN_OFFSET,
) -> tf.Tensor:
  """A uniformly random `count`-subset of [0, size), as a bool mask.

  Exactly `min(count, size)` entries are True, and every subset of that
  size is equally likely: the procedure treats all positions alike (its
  output law is invariant under permutations of [0, size)), and a
  procedure that always returns the same number of positions with a
  permutation-invariant law returns a uniformly random subset.

  How: each position gets a key u ~ U(0, 1); keys below a lower cut are
  kept, keys above an upper cut dropped, and the few positions in between
  (a band about 16 standard deviations of the binomial count wide) are
  completed in the order of fresh float64 keys. If the band misses the
  count (probability below 1e-12) every position is ranked by a fresh
  float64 key instead (a full sort, slower and equally exact). Ties between
  float64 keys (probability below size² · 2**-53) go to the lower position.

  Args:
    size: Scalar int (tensor), the number of positions.
    count: Scalar int (tensor), how many to keep.
    seed: A `[2]` int64 seed.
    margin_deviations: Half-width of the band in standard deviations of the
      count.
    margin_offset: Added to the half-width, in positions. Smaller margins
      only make the fallback more frequent (tests use 0 to exercise it).

  Returns:
    A bool tensor of shape `[size]`.
  """
  size = tf.cast(size, tf.int64)
  count = tf.clip_by_value(tf.cast(count, tf.int64), 0, size)
  return tf.cond(
    tf.equal(count, size),
    lambda: tf.ones(tf.reshape(size, [1]), tf.bool),
    lambda: _banded_subset(size, count, seed, margin_deviations, margin_offset),
  )


def chunk_probability(
  count: int, size: int, pass_probability: tf.Tensor
) -> tf.Tensor:
  """Inclusion probability of a prefix that very likely holds `count` passes.

  If every position passes independently with probability at least
  `pass_probability`, a Bernoulli(κ) subset of [0, size) holds fewer than
  `count` passing positions with probability at most
  exp(-(μ - count)² / (2μ)) for μ = κ·size·pass_probability (Chernoff);
  κ is chosen so that this is at most 1e-12.

  Returns:
    Scalar float64 κ in (0, 1] (1 when no smaller prefix suffices).
  """
  log_odds = math.log(1e12)
  mean = count + log_odds + math.sqrt(log_odds**2 + 2.0 * log_odds * count)
  pass_probability = tf.cast(pass_probability, tf.float64)
  kappa = mean / (size * tf.maximum(pass_probability, 1e-300))
  return tf.minimum(kappa, 1.0)


def _banded_subset(size, count, seed, margin_deviations, margin_offset):
  """`uniform_subset` for count < size (see there)."""
  keys = tf.random.stateless_uniform(
    tf.reshape(size, [1]), substream(seed, 0), dtype=tf.float32
  )
  n = tf.cast(tf.maximum(size, 1), tf.float64)
  p = tf.cast(count, tf.float64) / n
  deviation = tf.sqrt(n * p * (1.0 - p))
  spread = (margin_deviations * deviation + margin_offset) / n
  lower = tf.cast(p - spread, tf.float32)
  upper = tf.cast(p + spread, tf.float32)
  keep = keys < lower
  band = tf.logical_and(keys >= lower, keys < upper)
  missing = count - tf.reduce_sum(tf.cast(keep, tf.int64))
  in_band = tf.reduce_sum(tf.cast(band, tf.int64))

  def complete_band():
    band_positions = tf.where(band)[:, 0]
    fresh = tf.random.stateless_uniform(
      tf.shape(band_positions), substream(seed, 1), dtype=tf.float64
    )
    chosen = tf.gather(band_positions, tf.argsort(fresh)[:missing])
    return tf.logical_or(keep, _mask(chosen, size))

  def rank_all():
    fresh = tf.random.stateless_uniform(
      tf.reshape(size, [1]), substream(seed, 2), dtype=tf.float64
    )
    chosen = tf.cast(tf.argsort(fresh)[:count], tf.int64)
    return _mask(chosen, size)

  band_ok = tf.logical_and(missing >= 0, missing <= in_band)
  return tf.cond(band_ok, complete_band, rank_all)


def _mask(positions: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """A bool `[size]` mask, True at `positions` (int64, distinct)."""
  return tf.raw_ops.SparseToDense(
    sparse_indices=positions,
    output_shape=tf.reshape(size, [1]),
    sparse_values=True,
    default_value=False,
    validate_indices=False,
  )
