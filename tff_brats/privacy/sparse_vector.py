"""The sparse vector technique (SVT) over a model update, exactly, on integers.

Lyu, Su & Li 2017, "Understanding the Sparse Vector Technique for
Differential Privacy" (VLDB), Algorithm 1 with numeric answers, as used
by Li et al. 2019, "Privacy-preserving Federated Brain Tumour
Segmentation". On w = ΔW / n clipped to [-γ, γ]^N, with c = ⌈q·N⌉:

* budgets: ε1 = ε / (1 + (2c)^(2/3)) for the threshold, ε2 = ε - ε1 for
  the queries (the split Lyu et al. recommend for non-monotonic queries;
  computed in `budget`, the one place planning reads too);
* the lattice (`budget.sparse_vector_lattice`): Δ = 2^e with G = ⌊γ/Δ⌋ in
  [2^16, 2^17); each w_i becomes the integer x_i = round(clip(w_i)/Δ) in
  [-G, G] (a deterministic function of the client's own update), and τ
  becomes T = round(τ/Δ);
* ρ ~ DL(a1), a1 = ⌈G/ε1⌉, drawn once per call; the noisy threshold is
  K = T + ρ;
* coordinates are visited in a uniformly random order; coordinate i passes
  when |x_i| + ν_i >= K, ν_i ~ DL(a2), a2 = ⌈2cG/ε2⌉, fresh for each query;
* a passing coordinate is released as Δ·clip(x_i + η_i, -G, G),
  η_i ~ DL(a3), a3 = ⌈2cG/ε3⌉, times n;
* the scan stops at the c-th pass; everything not released is exactly 0.

DL(a) is the discrete Laplace distribution, P(k) ∝ exp(-|k|/a) on the
integers, drawn exactly in integer arithmetic (`discrete`).

The guarantee: one call is (ε + ε3, 0)-DP in w, with no floating-point
caveat. Between neighbouring updates (any w, w' in [-γ, γ]^N, same n), |x_i|
changes by at most G and x_i by at most 2G. Lyu et al.'s proof of
Algorithm 1 only shifts the noise by these amounts (ρ by G, a passing
query's ν_i by 2G) and bounds the density ratio of each shift; for integer
shifts of DL(a) the ratio is at most exp(shift/a) exactly, so the
threshold spends G/a1 <= ε1, the queries 2cG/a2 <= ε2 and the c released
values c·2G/a3 <= ε3. The float32 release Δ·r·n is computed exactly from
the integer r (Δ is a power of two, |r| <= 2^17) and then multiplied by n,
which the server knows anyway: no float rounding depends on the noise and
the input together, unlike float Laplace noise (Mironov 2012, "On
significance of the least significant bits for differential privacy").
The rest is exact too: the random order's first c passes are a uniformly
random subset of the passes (`randomness.uniform_subset`, whose ties are
redrawn). The one assumption is that the random bits are independent and
uniform: Philox, keyed by a fresh 128-bit seed (`randomness`).

How it is computed, fast: every coordinate is queried at once. One 32-bit
word per query settles it unless its uniform falls within a fraction of
about |K|/a2 of the boundary (`discrete.signed_tail`); only those
coordinates read their value. Likewise each release is ±G from one word,
except a fraction of about 2G/a3 = ε3/c, which draw their noise exactly.

Unlike NVFlare's `SVTPrivacy` (issues #343, #1214, #4470), no value is
released without its noise, the released coordinates are distinct (a
subset, not draws with replacement), the scan stops at the c-th pass, and
the budget reported (`mechanisms`: ε + ε3) is the one the noise gives.
"""

from __future__ import annotations

import tensorflow as tf

from tff_brats.privacy import budget
from tff_brats.privacy import discrete
from tff_brats.privacy import randomness

# Plain TensorFlow (explicit tf.cond/tf.while_loop): no AutoGraph rewrite.
_plain = tf.autograph.experimental.do_not_convert

# Above this prefix fraction, querying every coordinate at once is cheaper.
_MAX_PREFIX_FRACTION = 0.5


@_plain
def sparse_vector(
  update: tf.Tensor,
  steps: tf.Tensor | None,
  *,
  shared_count: int,
  clip_bound: float,
  threshold: float,
  selection_epsilon: float,
  release_epsilon: float,
  seed: tf.Tensor,
  resolution_bits: int = budget.RESOLUTION_BITS,
  prefix_fraction: float | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """Runs the SVT on a flat update (see the module docstring).

  Args:
    update: float32 `[N]`, ΔW. NaN is treated as 0 and ±inf is clipped.
    steps: n (float32 scalar, positive) to work on ΔW / n and multiply the
      release by n, or None to work on ΔW.
    shared_count: c, a Python int in [1, N].
    clip_bound: γ > 0.
    threshold: τ >= 0.
    selection_epsilon: ε > 0, for the threshold and the queries.
    release_epsilon: ε3 > 0, for the released values.
    seed: `[2]` int64 seed of this call.
    resolution_bits: g: the lattice has G in [2^g, 2^(g+1)) steps per γ
      (tests use coarse lattices, where every path runs often).
    prefix_fraction: For tests: the fraction κ of the order queried first
      instead of the automatic choice (1 queries everything at once). The
      output distribution is the same for every κ in (0, 1].

  Returns:
    `(release, stats)`: float32 `[N]` with at most c non-zero values (the
    released ones, multiples of n·Δ in [-nγ, nγ]), and scalar tensors
    `released` (int32), `noisy_threshold` (float32 (T + ρ)·Δ) and `passed`
    (int32: the tests passed; more than `released` means the scan stopped
    at the c-th pass).
  """
  size = update.shape[0]
  scales = budget.sparse_vector_budget(
    shared_count=shared_count,
    clip_bound=clip_bound,
    selection_epsilon=selection_epsilon,
    release_epsilon=release_epsilon,
  )
  lattice = budget.sparse_vector_lattice(scales, threshold, resolution_bits)
  values = _Lattice(update, steps, lattice)
  rho = discrete.discrete_laplace(
    [],
    lattice.threshold_scale,
    randomness.substream(seed, randomness.THRESHOLD_STREAM),
  )
  noisy_threshold = tf.constant(lattice.threshold, tf.int64) + rho
  scan = _Scan(values, noisy_threshold, lattice, size, shared_count, seed)
  if prefix_fraction is None:
    kappa = randomness.chunk_probability(
      shared_count, size, scan.least_pass_probability()
    )
  else:
    kappa = tf.constant(min(float(prefix_fraction), 1.0), tf.float64)
  selected, passed = scan.run(kappa)
  released = _release(
    values.at(selected),
    lattice,
    randomness.substream(seed, randomness.RELEASE_STREAM),
  )
  # Exact: |r| <= 2^17 < 2^24 and Δ is a power of two.
  if lattice.exponent >= -126:
    noisy = tf.cast(released, tf.float32) * lattice.spacing
  else:
    noisy = tf.cast(tf.cast(released, tf.float64) * lattice.spacing, tf.float32)
  if steps is not None:
    noisy = noisy * steps
  release = tf.raw_ops.SparseToDense(
    sparse_indices=selected,
    output_shape=tf.constant([size], tf.int64),
    sparse_values=noisy,
    default_value=tf.constant(0.0, tf.float32),
    validate_indices=False,
  )
  stats = {
    'released': tf.size(selected, out_type=tf.int32),
    'noisy_threshold': tf.cast(
      tf.cast(noisy_threshold, tf.float64) * lattice.spacing, tf.float32
    ),
    'passed': tf.cast(passed, tf.int32),
  }
  return release, stats


class _Scan:
  """Queries coordinates in a uniformly random order; keeps the first c passes.

  Within a set of coordinates visited together, the order is that of
  independent uniform keys (a 32-bit word each, refined by fresh bits where
  words tie): its first passes are the passing coordinates with the
  smallest keys.
  """

  def __init__(self, values, noisy_threshold, lattice, size, count, seed):
    self.values = values
    self.noisy_threshold = noisy_threshold
    self.bound = tf.constant(lattice.bound, tf.int64)
    self.scale = lattice.query_scale
    self.size = size
    self.count = count
    self.seed = seed

  def least_pass_probability(self) -> tf.Tensor:
    """P(ν >= K), the pass probability of x = 0 (only sizes the prefix)."""
    k = tf.cast(self.noisy_threshold, tf.float64)
    q = tf.exp(-1.0 / tf.constant(self.scale, tf.float64))
    upper = tf.exp(-tf.abs(k) / self.scale) / (1.0 + q)
    return tf.where(k >= 1.0, upper, 1.0 - q * upper)

  def _query(self, positions, stream):
    """Query results at `positions` (int64, global), and order keys."""
    k_max = self.noisy_threshold

    # Query i passes when ν_i >= k_i = K - |x_i|: with ν_i = ±X, when
    # X >= k_i (sign +), or when 1 <= X < 1 - k_i (sign -; X = 0 is
    # redrawn).
    def points(local, negative):
      k = k_max - tf.abs(self.values.at(tf.gather(positions, local)))
      return tf.where(negative, tf.maximum(1 - k, 1), k)

    tail = discrete.signed_tail(
      tf.size(positions),
      self.scale,
      (tf.maximum(k_max, 0), tf.maximum(1 - k_max + self.bound, 1)),
      points,
      randomness.substream(self.seed, stream),
      positive_values=False,
    )
    passes = tf.tensor_scatter_nd_update(
      tf.logical_and(tail.settled, tf.logical_not(tail.negative)),
      tail.positions[:, None],
      tf.not_equal(tail.sub_negative, tail.sub_beyond),
    )
    # The order keys: 8 bits of each query's word that nothing else reads.
    return passes, tail.spare

  def run(self, kappa):
    """Visits a prefix, then (if it held fewer than c passes) the rest.

    The prefix is everything when κ >= 1/2, else an i.i.d. Bernoulli(κ')
    subset, κ' = ⌈256κ⌉/256 >= κ, drawn from one byte per coordinate. Any
    data-independent prefix whose law is exchangeable, visited in a
    uniformly random order and followed by the rest in a uniformly random
    order, makes the whole order uniformly random; so every κ gives the
    same output law. One pass of the loop visits one of the two sets.

    Returns:
      `(selected, passed)`: int64 positions and the number of passes.
    """
    everything = kappa >= _MAX_PREFIX_FRACTION
    in_prefix = tf.cond(
      everything,
      lambda: tf.ones([self.size], bool),
      lambda: self._members(kappa),
    )

    def visited(stage):
      def prefix():
        return tf.cond(
          everything,
          lambda: tf.range(self.size, dtype=tf.int64),
          lambda: _where(in_prefix),
        )

      return tf.cond(
        tf.equal(stage, 0),
        prefix,
        lambda: _where(tf.logical_not(in_prefix)),
      )

    def body(stage, kept, passed, done):
      positions = visited(stage)
      query_stream = tf.where(
        tf.equal(stage, 0),
        tf.constant(randomness.QUERY_STREAM, tf.int64),
        tf.constant(randomness.REST_QUERY_STREAM, tf.int64),
      )
      passes, keys = self._query(positions, query_stream)
      num_passing = tf.reduce_sum(tf.cast(passes, tf.int64))
      needed = self.count - tf.size(kept, out_type=tf.int64)
      local = tf.cond(
        num_passing <= needed,
        lambda: _where(passes),
        lambda: _smallest_keys(
          passes,
          keys,
          num_passing,
          needed,
          randomness.substream(
            self.seed,
            tf.where(
              tf.equal(stage, 0),
              tf.constant(randomness.REST_ORDER_STREAM, tf.int64),
              tf.constant(randomness.REST_VISIT_STREAM, tf.int64),
            ),
          ),
        ),
      )
      chosen = tf.cond(
        everything, lambda: local, lambda: tf.gather(positions, local)
      )
      done = tf.logical_or(
        num_passing >= needed, tf.logical_or(everything, stage > 0)
      )
      return (
        stage + 1,
        tf.concat([kept, chosen], axis=0),
        passed + num_passing,
        done,
      )

    _, kept, passed, _ = tf.while_loop(
      lambda stage, kept, passed, done: tf.logical_not(done),
      body,
      (
        tf.constant(0, tf.int64),
        tf.zeros([0], tf.int64),
        tf.constant(0, tf.int64),
        tf.constant(False),
      ),
      shape_invariants=(
        tf.TensorShape([]),
        tf.TensorShape([None]),
        tf.TensorShape([]),
        tf.TensorShape([]),
      ),
      parallel_iterations=1,
    )
    return kept, passed

  def _members(self, kappa):
    """An i.i.d. Bernoulli(⌈256κ⌉/256) mask, one random byte per coordinate."""
    words = tf.random.stateless_uniform(
      [-(-self.size // 4)],
      randomness.substream(self.seed, randomness.CHUNK_STREAM),
      minval=None,
      maxval=None,
      dtype=tf.int32,
    )
    octets = tf.reshape(tf.bitcast(words, tf.uint8), [-1])[: self.size]
    level = tf.cast(tf.math.ceil(tf.minimum(kappa, 0.5) * 256.0), tf.uint8)
    return octets < level


_KEY_VALUES = 256  # order keys are uniform on {0, …, 255}


@_plain
def _smallest_keys(candidates, keys, num_candidates, count, seed):
  """Positions of the `count` candidates with the smallest keys.

  Candidates are a bool mask; keys are independent uniform 8-bit integers
  (int32), refined by fresh 32-bit words where the order needs them
  (`randomness.ordered_by`), so that every order of the candidates is
  equally likely. A histogram of the candidates' keys gives the cut L:
  every candidate with a key below L is among the first `count`, and the
  rest are drawn from the candidates whose key is L, in refined order.
  """
  count = tf.minimum(tf.cast(count, tf.int64), num_candidates)
  # Non-candidates get key 256, after every candidate.
  marked = tf.where(candidates, keys, _KEY_VALUES)
  histogram = tf.math.bincount(
    marked, minlength=_KEY_VALUES + 1, maxlength=_KEY_VALUES + 1, dtype=tf.int64
  )
  below = tf.cumsum(histogram, exclusive=True)
  # The largest L with at most `count` candidates below it (below is
  # non-decreasing and below[0] = 0).
  cut = tf.reduce_sum(tf.cast(below <= count, tf.int32)) - 1
  missing = count - tf.gather(below, cut)

  def ranked():
    positions = tf.where(tf.equal(marked, cut))[:, 0]
    order = randomness.ordered_by(
      tf.gather(keys, positions), randomness.substream(seed, 1)
    )
    return tf.gather(positions, order[:missing])

  return tf.concat(
    [
      _where(marked < cut),
      tf.cond(missing > 0, ranked, lambda: tf.zeros([0], tf.int64)),
    ],
    axis=0,
  )


@_plain
def _where(mask: tf.Tensor, pieces: int = 2) -> tf.Tensor:
  """`tf.where(mask)[:, 0]` for a 1-D mask, in pieces that run in parallel.

  TensorFlow's CPU Where runs on one thread; large masks are split so that
  the pieces use the inter-op threads.
  """
  static = mask.shape[0]
  if static is not None and static < 2**20:
    return tf.where(mask)[:, 0]
  size = tf.size(mask, out_type=tf.int64)
  step = (size + pieces - 1) // pieces
  return tf.concat(
    [
      tf.where(mask[i * step : (i + 1) * step])[:, 0] + i * step
      for i in range(pieces)
    ],
    axis=0,
  )


class _Lattice:
  """The update's values as lattice integers, read where needed."""

  def __init__(self, update, steps, lattice):
    self.update = update
    self.steps = steps
    self.exponent = lattice.exponent
    self.limit = tf.constant(lattice.bound * lattice.spacing, tf.float32)

  def at(self, positions: tf.Tensor) -> tf.Tensor:
    """x_i = round(clip(w_i, ±GΔ)/Δ) at `positions`, int64 (NaN as 0)."""
    w = tf.gather(self.update, positions)
    w = tf.where(tf.math.is_nan(w), tf.zeros_like(w), w)
    if self.steps is not None:
      w = w / self.steps
    w = tf.clip_by_value(w, -self.limit, self.limit)
    # Scaling by a power of two is exact (|w|/Δ <= G < 2^18).
    if -self.exponent <= 127:
      scaled = w * tf.constant(2.0 ** (-self.exponent), tf.float32)
    else:
      scaled = tf.cast(w, tf.float64) * 2.0 ** (-self.exponent)
    return tf.cast(tf.round(scaled), tf.int64)


@_plain
def _release(x, lattice, seed):
  """clip(x + η, -G, G) with η ~ DL(a3), for each integer x in [-G, G].

  With η = ±X: sign +: G when X >= G - x, else x + X; sign -: -G when
  X >= max(G + x, 1), else x - X (X = 0 is redrawn).
  """
  bound = tf.constant(lattice.bound, tf.int64)

  def release_points(positions, negative):
    value = tf.gather(x, positions)
    return tf.where(negative, tf.maximum(bound + value, 1), bound - value)

  tail = discrete.signed_tail(
    tf.size(x),
    lattice.release_scale,
    (2 * bound, 2 * bound),
    release_points,
    seed,
  )
  saturated = tf.where(tail.negative, -bound, bound)
  value = tf.gather(x, tail.positions)
  sign = tail.sub_negative
  inside = tf.where(
    tail.sub_beyond,
    tf.where(sign, -bound, bound),
    tf.where(sign, value - tail.sub_below, value + tail.sub_below),
  )
  return tf.tensor_scatter_nd_update(saturated, tail.positions[:, None], inside)
