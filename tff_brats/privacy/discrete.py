"""Exact discrete noise in integer arithmetic, as traceable TensorFlow.

The sparse vector technique (`sparse_vector`) works on integers: values on a
lattice, noise from the discrete Laplace distribution DL(a),

    P(X = k) = (1 - q) / (1 + q) · q^|k|,   q = exp(-1/a),  a a positive
    integer,

which is ε-DP for integer queries of sensitivity Δ when Δ/a <= ε, with no
floating-point caveat (Canonne, Kamath & Steinke 2020, "The Discrete
Gaussian for Differential Privacy", NeurIPS; there DL(a) is "discrete
Laplace with scale t = a"). Every sampler here is exact: its output law is
the stated one, given independent uniform random bits, with no rounding
anywhere. They only draw integers (`uniform_below`) and compare them with
integers.

The building blocks, after Canonne, Kamath & Steinke (CKS):

* `uniform_below(n)`: uniform on {0, …, n - 1}: 62 random bits, rejected
  when they fall in the incomplete last block of n values (probability
  below n / 2**62; only those elements draw again), else reduced mod n.
* Bernoulli(exp(-1)) (`_exp_one`): CKS Algorithm 1 with γ = 1 (K = 1;
  while Bernoulli(1/K): K += 1; return K odd). Its steps 2 to 7 come from
  one z uniform in [0, 7!): the mixed-radix digits ⌊z/(j-1)!⌋ mod j are
  independent and uniform on [0, j), and step j succeeds when its digit is
  0, so the run stops at the least j with z mod j! != 0, a table look-up;
  z = 0 (probability 1/5040) continues from K = 8.
* `bernoulli_exp(m, a)`: Bernoulli(exp(-m/a)) for integers m >= 0: the
  whole part as ⌊m/a⌋ Bernoulli(exp(-1)) draws (`_runs`, stopping at the
  first failure), the fraction γ = (m mod a)/a by CKS Algorithm 1, where
  step K is Bernoulli(γ/K) = Bernoulli((m mod a)/(a·K)), rational.
* X ~ Geometric: P(X >= m) = q^m, so "X >= m" is `bernoulli_exp(m, a)`, and
  X is memoryless: X - m given X >= m is again geometric.
* `geometric(a)`: CKS Algorithm 2 (U uniform in {0, …, a - 1} accepted with
  probability exp(-U/a), V the number of Bernoulli(exp(-1)) successes before
  the first failure, X = U + a·V).
* `truncated_geometric(m, a)`: X given X < m, by rejection from CKS
  Algorithm 2's candidates.
* `discrete_laplace(a)`: a fair sign bit B and X ~ Geometric, (B = 1, X = 0)
  rejected; the value is (1 - 2B)·X.

`signed_tail` is the vectorised form the SVT needs for millions of values
at once: for each element, ν ~ DL(a) as (B, X), whether X >= m_B for
per-element integers m_0, m_1, and X itself when it is smaller. One 32-bit
word per element settles most elements when every m is below a: its top
bit is B and its low 23 bits are the first bits R of the uniform of the
first step of CKS Algorithm 1 for exp(-m/a), which ends there ("X >= m")
when that uniform is at least m/a, certainly so when R >= ⌈m_max·2**23 / a⌉
for the largest m of the element's sign. The other 8 bits are left to the
caller. The other elements continue the same algorithm exactly from R
where m < a; where m >= a (R then carries no information), they draw X
itself, or, when X is not wanted, [X >= 1] and then [X >= m] given it.

Loops are `tf.while_loop`s over shrinking lists (`_per_element`): each
iteration draws for every element still undecided, from its own stream
(`randomness.substream` of the iteration), and carries on only those still
undecided. Every loop ends with probability 1 and after few iterations in
expectation. Integer ranges: scales up to `MAX_SCALE` = 2**48 and
comparison points up to 2**62 keep every product within int64; a
geometric value overflows only if more than 2**13 successive
Bernoulli(exp(-1)) draws succeed (probability e**-8192).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
from typing import Any
from typing import NamedTuple

import tensorflow as tf

from tff_brats.privacy import randomness

# Plain TensorFlow (explicit tf.cond/tf.while_loop): no AutoGraph rewrite.
_plain = tf.autograph.experimental.do_not_convert

MAX_SCALE = 2**48  # largest scale a; keeps a·2**8 and U + a·V within int64
_WORD_MASK = (1 << 62) - 1  # 62 random bits of an int64 word
_PREFIX_BITS = 23  # R: the low 23 bits of a 32-bit word
_PREFIX_MASK = (1 << _PREFIX_BITS) - 1
_SPARE_BITS = 8  # bits 23-30, for the caller (`Tail.spare`)
_SPARE_MASK = (1 << _SPARE_BITS) - 1
_MAX_RUN = 2**13  # cap on V (never reached with probability 1 - e**-8192)

# Streams of one call, folded into its seed.
_STREAM_WORD = 10
_STREAM_FIRST_STEP = 11
_STREAM_TAIL = 12
_STREAM_RETRY = 13


_VECTOR = tf.TensorSpec([None], tf.int64)
_SCALAR = tf.TensorSpec([], tf.int64)
_SEED = tf.TensorSpec([2], tf.int64)


def _shared(*specs: tf.TensorSpec, rare: bool = False) -> Callable:
  """Makes a sampler one TensorFlow function, traced once per process.

  A mechanism's graph calls its samplers from dozens of places (nested
  loops and branches); as functions, each is traced and optimised once and
  called from every place, instead of being copied into the graph at each
  (one SVT: 10,956 graph nodes before, 3,677 now; tracing 4.7 s -> 1.6 s).
  TensorFlow still inlines the calls when it optimises the graph, except
  for `rare` samplers (on branches that almost never run): a call that is
  not inlined costs a few hundredths of a millisecond each time it runs,
  but its copies need not be optimised (first call 4.9 s -> 3.1 s).
  Arguments are cast to int64 and must match `specs` (1-D vectors,
  scalars, seeds).
  """

  def wrap(fn: Callable) -> Callable:
    shared = tf.function(
      fn,
      input_signature=specs,
      autograph=False,
      experimental_attributes={'_noinline': True} if rare else None,
    )

    @functools.wraps(fn)
    def call(*args):
      return shared(*(_int64(arg) for arg in args))

    return call

  return wrap


@_plain
def _int64(value: Any) -> tf.Tensor:
  return tf.cast(value, tf.int64)


@_plain
def _loop(
  cond: Callable, body: Callable, loop_vars: tuple, shapes: tuple | None = None
) -> tuple:
  return tf.while_loop(
    cond, body, loop_vars, shape_invariants=shapes, parallel_iterations=1
  )


@_plain
def _until_accepted(shape: Any, draw: Callable, seed: tf.Tensor) -> tf.Tensor:
  """Elementwise rejection sampling of int64 values.

  `draw(stream)` returns `(candidates, accepted)` shaped `shape`; it is
  called with the fresh streams 0, 1, 2, … of `seed` until every element
  has been accepted once, and each element keeps its first accepted
  candidate.
  """

  def body(i, value, done):
    candidate, accepted = draw(randomness.substream(seed, i))
    take = tf.logical_and(tf.logical_not(done), accepted)
    return i + 1, tf.where(take, candidate, value), tf.logical_or(done, take)

  _, value, _ = _loop(
    lambda i, value, done: tf.logical_not(tf.reduce_all(done)),
    body,
    (
      tf.constant(0, tf.int64),
      tf.zeros(shape, tf.int64),
      tf.zeros(shape, bool),
    ),
  )
  return value


@_plain
def _per_element(
  state: tuple, step: Callable, seed: tf.Tensor, dtype: Any = tf.int64
) -> Any:
  """Runs `step` on the elements still going until every one has finished.

  `state` is a tuple of 1-D tensors with one entry per element.
  `step(stream, state)` returns `(finished, value, state)`: a bool tensor
  and the value (a tensor of `dtype`, or a tuple of them for a tuple of
  dtypes) for the elements still going, and their next state; a finished
  element's value is its result. Only the elements still going are
  carried (a shrinking list), so a pass costs what remains in it, and the
  finished ones are collected and written once at the end.

  Returns:
    The results in element order, shaped like `state[0]` (a tuple when
    `dtype` is one).
  """
  size = tf.size(state[0], out_type=tf.int64)
  vector = tf.TensorShape([None])
  dtypes = dtype if isinstance(dtype, tuple) else (dtype,)

  def arrays(dtype):
    # Slot 0 holds an empty piece, so that concat() has one even when no
    # pass runs (eager TensorArrays cannot concatenate nothing).
    return tf.TensorArray(
      dtype,
      size=0,
      dynamic_size=True,
      infer_shape=False,
      element_shape=vector,
    ).write(0, tf.zeros([0], dtype))

  def body(i, at, state, done_at, done_values):
    finished, values, state = step(randomness.substream(seed, i), state)
    values = values if isinstance(values, tuple) else (values,)
    slot = tf.cast(i, tf.int32) + 1
    # One Where per mask, shared by every gather (boolean_mask would
    # compute it again for each tensor).
    ended = tf.where(finished)[:, 0]
    done_at = done_at.write(slot, tf.gather(at, ended))
    done_values = tuple(
      done.write(slot, tf.gather(value, ended))
      for done, value in zip(done_values, values, strict=True)
    )
    going = tf.where(tf.logical_not(finished))[:, 0]
    state = tuple(tf.gather(t, going) for t in state)
    return i + 1, tf.gather(at, going), state, done_at, done_values

  _, _, _, done_at, done_values = _loop(
    lambda i, at, *_: tf.size(at) > 0,
    body,
    (
      tf.constant(0, tf.int64),
      tf.range(size),
      tuple(state),
      arrays(tf.int64),
      tuple(arrays(dtype) for dtype in dtypes),
    ),
    (
      tf.TensorShape([]),
      vector,
      tuple(vector for _ in state),
      None,
      tuple(None for _ in dtypes),
    ),
  )
  # DynamicStitch, not ScatterNd: ten times faster on a million indices.
  at = [tf.cast(done_at.concat(), tf.int32)]
  results = tuple(
    tf.dynamic_stitch(at, [done.concat()]) for done in done_values
  )
  return results if isinstance(dtype, tuple) else results[0]


@_plain
def _words(shape: Any, seed: tf.Tensor) -> tf.Tensor:
  """62 uniform random bits per element, as non-negative int64."""
  word = tf.random.stateless_uniform(
    shape, seed, minval=None, maxval=None, dtype=tf.int64
  )
  return tf.bitwise.bitwise_and(word, _WORD_MASK)


@_plain
def uniform_below(n: Any, seed: tf.Tensor) -> tf.Tensor:
  """Exactly uniform integers in [0, n), elementwise.

  One 62-bit word per element, reduced mod n unless it falls in the
  incomplete last block of n values (probability below n / 2**62); those
  few elements draw again from fresh streams until they are accepted.

  Args:
    n: int64 tensor (any shape) of bounds in [1, 2**62].
    seed: A `[2]` int64 seed.

  Returns:
    int64 tensor shaped like `n`.
  """
  n = _int64(n)
  return tf.reshape(_uniform_below(tf.reshape(n, [-1]), seed), tf.shape(n))


@_shared(_VECTOR, _SEED)
def _uniform_below(n, seed):
  """`uniform_below` on a vector."""
  limit = ((1 << 62) // n) * n  # largest multiple of n <= 2**62
  bits = _words(tf.shape(n), randomness.substream(seed, 0))

  def redraw(at):
    return _redraw_below(
      tf.gather(n, at), tf.gather(limit, at), randomness.substream(seed, 1)
    )

  return _subset_update(tf.math.floormod(bits, n), bits >= limit, redraw)


@_shared(_VECTOR, _VECTOR, _SEED, rare=True)
def _redraw_below(n, limit, seed):
  """Uniform in [0, n) from words below `limit`, drawn until accepted."""

  def draw(stream):
    bits = _words(tf.shape(n), stream)
    return tf.math.floormod(bits, n), bits < limit

  return _until_accepted(tf.shape(n), draw, seed)


@_plain
def bernoulli_rational(num: Any, den: Any, seed: tf.Tensor) -> tf.Tensor:
  """Bernoulli(num/den), elementwise, for integers 0 <= num <= den."""
  den = _int64(den) + tf.zeros_like(_int64(num))
  return uniform_below(den, seed) < _int64(num)


def _exp_one_table() -> list[bool]:
  """CKS Algorithm 1 for exp(-1), steps 2-7, from one z in [0, 7!).

  z's mixed-radix digits d_j = ⌊z/(j-1)!⌋ mod j (j = 2, …, 7) are
  independent and uniform on [0, j): step j's Bernoulli(1/j) succeeds
  when d_j = 0, that is (with all earlier steps) when z mod j! = 0. Step
  1's Bernoulli(1/1) always succeeds. So the run stops at K = the least j
  with z mod j! != 0 and succeeds when K is odd; z = 0 (every step up to
  7 succeeded) continues from K = 8.
  """
  table = []
  for z in range(math.factorial(_RUN_STEPS)):
    stop = next(
      (j for j in range(2, _RUN_STEPS + 1) if z % math.factorial(j)), None
    )
    table.append(stop is not None and stop % 2 == 1)
  return table


_RUN_STEPS = 7
_EXP_ONE = _exp_one_table()


@_plain
def _exp_one(shape: Any, seed: tf.Tensor) -> tf.Tensor:
  """Bernoulli(exp(-1)), elementwise, exactly: one table look-up each."""
  z = uniform_below(
    tf.fill(shape, tf.constant(len(_EXP_ONE), tf.int64)),
    randomness.substream(seed, 0),
  )
  success = tf.gather(tf.constant(_EXP_ONE), z)
  return _subset_update(
    success,
    tf.equal(z, 0),
    lambda at: _cks_from_rare(
      tf.ones_like(at),
      tf.ones_like(at),
      tf.fill(tf.shape(at), tf.constant(_RUN_STEPS + 1, tf.int64)),
      randomness.substream(seed, 1),
    ),
  )


@_plain
def _cks_steps(num: Any, den: Any, k: Any, seed: tf.Tensor) -> tf.Tensor:
  """CKS Algorithm 1 for exp(-num/den), from step k, elementwise (1-D).

  Step K draws Bernoulli(num/(den·K)); the first that fails ends the run,
  which succeeds when that K is odd. The caller has seen steps 1, …, k - 1
  succeed. Requires 0 <= num <= den.
  """

  def step(stream, state):
    num, den, k = state
    go_on = uniform_below(den * k, stream) < num
    return (
      tf.logical_not(go_on),
      tf.equal(tf.math.floormod(k, 2), 1),
      (num, den, k + 1),
    )

  return _per_element((num, den, k), step, seed, tf.bool)


_cks_from = _shared(_VECTOR, _VECTOR, _VECTOR, _SEED)(_cks_steps)
# After 6 successful steps of exp(-1)'s run (probability 1/5040 a draw).
_cks_from_rare = _shared(_VECTOR, _VECTOR, _VECTOR, _SEED, rare=True)(
  _cks_steps
)


@_shared(_VECTOR, _SEED)
def _runs(limit: Any, seed: tf.Tensor) -> tf.Tensor:
  """min(V, limit), V the successes of Bernoulli(exp(-1)) before a failure.

  P(V >= v) = exp(-v). Elementwise over a 1-D int64 `limit` (>= 0); only
  elements with limit > 0 draw.
  """

  def step(stream, state):
    count, limit = state
    success = _exp_one(tf.shape(count), stream)
    count = count + tf.cast(success, tf.int64)
    finished = tf.logical_or(tf.logical_not(success), count >= limit)
    return finished, count, (count, limit)

  return _subset_update(
    tf.zeros_like(limit),
    limit > 0,
    lambda at: _per_element(
      (tf.zeros_like(at), tf.gather(limit, at)), step, seed
    ),
  )


@_plain
def bernoulli_exp(
  m: Any, a: Any, seed: tf.Tensor, first_k: Any = None
) -> tf.Tensor:
  """Bernoulli(exp(-m/a)), elementwise, exactly.

  exp(-m/a) = exp(-1)^⌊m/a⌋ · exp(-(m mod a)/a): ⌊m/a⌋ Bernoulli(exp(-1))
  draws that must all succeed (`_runs`), then CKS Algorithm 1 for the
  fraction (`_cks_from`), each drawn only where still needed.

  Args:
    m: int64 tensor; values <= 0 give True.
    a: int64 scale in [1, MAX_SCALE], scalar or shaped like `m`.
    seed: A `[2]` int64 seed.
    first_k: Optional int64 tensor like `m`: where above 1 (only allowed
      where 0 < m < a), the first `first_k - 1` steps of the run for the
      fraction are known to have succeeded (the caller drew them), and the
      run continues from K = `first_k`.

  Returns:
    bool tensor shaped like `m`.
  """
  m = tf.maximum(_int64(m), 0)
  shape = tf.shape(m)
  a = tf.reshape(_int64(a) + tf.zeros_like(m), [-1])
  m = tf.reshape(m, [-1])
  whole = tf.math.floordiv(m, a)
  fraction = m - whole * a
  k = tf.ones_like(m) if first_k is None else tf.reshape(_int64(first_k), [-1])
  whole_ok = _runs(whole, randomness.substream(seed, 0)) >= whole
  result = _subset_update(
    whole_ok,
    tf.logical_and(whole_ok, fraction > 0),
    lambda at: _cks_from(
      tf.gather(fraction, at),
      tf.gather(a, at),
      tf.gather(k, at),
      randomness.substream(seed, 1),
    ),
  )
  return tf.reshape(result, shape)


@_shared(_VECTOR, _SCALAR, _SEED)
def _weighted_below(n: Any, a: Any, seed: tf.Tensor) -> tf.Tensor:
  """U in [0, n) with P(U = u) ∝ exp(-u/a), for 1-D n in [1, a].

  U uniform in [0, n), accepted with probability exp(-U/a) >= 1/e by CKS
  Algorithm 1 (U < a: no whole part), else drawn again. One loop does
  every step: each pass draws a candidate where one is needed and the
  next CKS step for every element.
  """

  def step(stream, state):
    n, u, k = state
    fresh = tf.equal(k, 0)
    u = tf.where(fresh, uniform_below(n, randomness.substream(stream, 1)), u)
    k = tf.where(fresh, tf.ones_like(k), k)
    go_on = uniform_below(a * k, randomness.substream(stream, 2)) < u
    odd = tf.equal(tf.math.floormod(k, 2), 1)
    accepted = tf.logical_and(tf.logical_not(go_on), odd)
    # A failed step ends the run: odd K accepts U, even K draws afresh.
    k = tf.where(go_on, k + 1, tf.zeros_like(k))
    return accepted, u, (n, u, k)

  return _per_element((n, tf.zeros_like(n), tf.zeros_like(n)), step, seed)


@_plain
def geometric(shape: Any, a: Any, seed: tf.Tensor) -> tf.Tensor:
  """X with P(X = x) = (1 - q)·q^x, x >= 0, q = exp(-1/a): CKS Algorithm 2.

  U in [0, a) with P(U = u) ∝ exp(-u/a) (`_weighted_below`); V the number
  of Bernoulli(exp(-1)) successes before the first failure (`_runs`);
  X = U + a·V.

  Args:
    shape: Output shape.
    a: int64 scalar scale in [1, MAX_SCALE].
    seed: A `[2]` int64 seed.

  Returns:
    An int64 tensor.
  """
  a = _int64(a)
  size = tf.reshape(tf.reduce_prod(_int64(shape)), [1])
  u = _weighted_below(tf.fill(size, a), a, randomness.substream(seed, 0))
  v = _runs(
    tf.fill(size, tf.constant(_MAX_RUN, tf.int64)),
    randomness.substream(seed, 1),
  )
  return tf.reshape(u + a * v, shape)


@_plain
def truncated_geometric(m: Any, a: Any, seed: tf.Tensor) -> tf.Tensor:
  """X ~ Geometric (as in `geometric`) given X < m, elementwise.

  Candidates X = U + a·V as in `geometric`, with U in [0, min(m, a)) and
  V capped at ⌊m/a⌋ + 1 (both leave the law of X < m unchanged), accepted
  when X < m: always for m <= a, with probability at least 1 - 1/e
  otherwise. Rejected elements are drawn again.

  Args:
    m: int64 tensor of bounds >= 1.
    a: int64 scalar scale in [1, MAX_SCALE].
    seed: A `[2]` int64 seed.

  Returns:
    int64 tensor shaped like `m`, in [0, m).
  """
  m = _int64(m)
  a = _int64(a)
  shape = tf.shape(m)

  def step(stream, state):
    (m,) = state
    u = _weighted_below(tf.minimum(m, a), a, randomness.substream(stream, 1))
    cap = tf.where(m <= a, tf.zeros_like(m), tf.math.floordiv(m, a) + 1)
    x = u + a * _runs(cap, randomness.substream(stream, 2))
    return x < m, x, (m,)

  return tf.reshape(_per_element((tf.reshape(m, [-1]),), step, seed), shape)


@_plain
def discrete_laplace(shape: Any, a: Any, seed: tf.Tensor) -> tf.Tensor:
  """DL(a): P(k) ∝ exp(-|k|/a) on the integers (CKS Algorithm 2).

  Args:
    shape: Output shape.
    a: int64 scalar scale in [1, MAX_SCALE].
    seed: A `[2]` int64 seed.

  Returns:
    An int64 tensor.
  """

  def draw(stream):
    negative, _ = _prefixes(shape, randomness.substream(stream, 1))
    x = geometric(shape, a, randomness.substream(stream, 2))
    accepted = tf.logical_not(tf.logical_and(negative, tf.equal(x, 0)))
    return tf.where(negative, -x, x), accepted

  return _until_accepted(shape, draw, seed)


@_plain
def scaled_ratio(m: Any, a: Any) -> tuple[tf.Tensor, tf.Tensor]:
  """(⌊m·2**23/a⌋, m·2**23 mod a) for int64 0 <= m < a <= MAX_SCALE.

  Long division in steps of at most 8 bits, so no product exceeds
  a·2**8 <= 2**56.
  """
  m = _int64(m)
  a = _int64(a)
  quotient = tf.zeros_like(m)
  remainder = m
  for bits in (8, 8, 7):
    remainder = remainder * (1 << bits)
    digit = tf.math.floordiv(remainder, a)
    remainder = remainder - digit * a
    quotient = quotient * (1 << bits) + digit
  return quotient, remainder


@_plain
def first_step_cut(m_max: Any, a: Any) -> tf.Tensor:
  """The least 23-bit prefix R with R/2**23 >= m_max/a (2**23 if none).

  A uniform whose first 23 bits are R >= this cut is at least m/a for every
  m <= m_max: the first Bernoulli(m/a) of CKS Algorithm 1 fails, so
  exp(-m/a)'s Bernoulli is True.
  """
  m_max = tf.maximum(_int64(m_max), 0)
  a = _int64(a)
  below = m_max < a
  quotient, remainder = scaled_ratio(tf.where(below, m_max, 0), a)
  cut = quotient + tf.cast(remainder > 0, tf.int64)
  return tf.where(below, cut, tf.constant(1 << _PREFIX_BITS, tf.int64))


@_plain
def signed_tail(
  size: Any,
  a: Any,
  m_max: tuple[Any, Any],
  m_at: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
  seed: tf.Tensor,
  *,
  positive_values: bool = True,
) -> Tail:
  """ν ~ DL(a) per element as (B, X): B, [X >= m_B], and X where smaller.

  Exact: for each of `size` elements independently, a sign bit B and
  X ~ Geometric(q) (P(X = x) = (1 - q)q^x) with (B = 1, X = 0) rejected
  and redrawn, which makes (1 - 2B)·X ~ DL(a); the outputs are B, whether
  X >= m_B (m_B from `m_at`, by the element's sign) and, where it is not,
  X itself. X's value beyond m_B is never drawn.

  Args:
    size: Number of elements (int scalar).
    a: int64 scalar scale in [1, MAX_SCALE].
    m_max: (max m_0, max m_1) over the elements, int64 scalars (upper
      bounds suffice): every element with R at or above the cut of its sign
      (`first_step_cut`) has X >= m_B without reading m_B.
    m_at: `m_at(positions, negative)` returns the int64 m_B at the given
      int64 positions for the given signs. Called only for the elements the
      first word does not settle.
    seed: A `[2]` int64 seed.
    positive_values: Whether X is wanted where X < m_0 for sign + (for sign
      - it is always drawn, to reject X = 0). Without it, `sub_below` is 0
      there.

  Returns:
    A `Tail`.
  """
  a = _int64(a)
  word = tf.random.stateless_uniform(
    tf.reshape(_int64(size), [1]),
    randomness.substream(seed, _STREAM_WORD),
    minval=None,
    maxval=None,
    dtype=tf.int32,
  )
  negative = word < 0
  prefix = tf.bitwise.bitwise_and(word, _PREFIX_MASK)
  cut_0 = first_step_cut(m_max[0], a)
  cut_1 = first_step_cut(m_max[1], a)
  cut = tf.where(negative, tf.cast(cut_1, tf.int32), tf.cast(cut_0, tf.int32))
  settled = prefix >= cut
  positions = tf.where(tf.logical_not(settled))[:, 0]
  sub_negative, sub_beyond, sub_below = _tail_rest(
    positions,
    tf.gather(negative, positions),
    tf.cast(tf.gather(prefix, positions), tf.int64),
    a,
    m_at,
    positive_values,
    seed,
  )
  spare = tf.bitwise.bitwise_and(
    tf.bitwise.right_shift(word, _PREFIX_BITS), _SPARE_MASK
  )
  return Tail(
    negative, settled, positions, sub_negative, sub_beyond, sub_below, spare
  )


class Tail(NamedTuple):
  """`signed_tail`'s result, settled elements apart from the others.

  Attributes:
    negative: bool `[size]`, B from the first word (final where `settled`).
    settled: bool `[size]`: X >= m_B, decided by the first word.
    positions: int64 positions of the other elements.
    sub_negative: bool, their final B (a rejection redraws it).
    sub_beyond: bool, their X >= m_B.
    sub_below: int64, their X where `sub_beyond` is False.
    spare: int32 `[size]`, 8 uniform bits per element (bits 23-30 of its
      word), independent of everything else here: free for the caller.
  """

  negative: tf.Tensor
  settled: tf.Tensor
  positions: tf.Tensor
  sub_negative: tf.Tensor
  sub_beyond: tf.Tensor
  sub_below: tf.Tensor
  spare: tf.Tensor


@_plain
def _step(m, a, prefix, seed):
  """Bernoulli(m/a) from a uniform whose first 23 bits are `prefix`.

  Exact for 0 <= m < a: the uniform is below m/a surely when prefix <
  ⌊m·2**23/a⌋, surely not when prefix > it, and with probability
  (m·2**23 mod a)/a on the boundary (drawn only there).
  """
  quotient, remainder = scaled_ratio(m, a)
  tie = tf.equal(prefix, quotient)
  at = tf.where(tie)[:, 0]

  def boundary():
    won = bernoulli_rational(tf.gather(remainder, at), a, seed)
    return tf.tensor_scatter_nd_update(tf.zeros_like(tie), at[:, None], won)

  on_boundary = tf.cond(
    tf.reduce_any(tie), boundary, lambda: tf.zeros_like(tie)
  )
  return tf.logical_or(prefix < quotient, on_boundary)


@_plain
def _subset_update(values, mask, fn):
  """`values` with `fn(positions)` written where `mask` (skipped if none)."""
  at = tf.where(mask)[:, 0]
  return tf.cond(
    tf.reduce_any(mask),
    lambda: tf.tensor_scatter_nd_update(values, at[:, None], fn(at)),
    lambda: values,
  )


@_plain
def exp_bernoulli(m: Any, a: Any, seed: tf.Tensor, prefix: Any) -> tf.Tensor:
  """`bernoulli_exp(m, a)`, its first step taken from given bits.

  Where m < a, step K = 1 of CKS Algorithm 1 for exp(-m/a) (Bernoulli(m/a))
  is decided by a uniform whose first 23 bits are `prefix` (`_step`, exact);
  it ends the run (True) for all but a fraction m/a, which continue from
  K = 2. Elements with m >= a go through `bernoulli_exp` afresh.
  """
  m = tf.maximum(_int64(m), 0)
  a = _int64(a)
  has_prefix = m < a
  first = _step(
    tf.where(has_prefix, m, tf.zeros_like(m)),
    a,
    _int64(prefix),
    randomness.substream(seed, _STREAM_FIRST_STEP),
  )
  rest = tf.logical_or(tf.logical_not(has_prefix), first)
  first_k = tf.where(has_prefix, 2 * tf.ones_like(m), tf.ones_like(m))
  return _subset_update(
    tf.logical_not(rest),
    rest,
    lambda at: bernoulli_exp(
      tf.gather(m, at),
      a,
      randomness.substream(seed, _STREAM_TAIL),
      first_k=tf.gather(first_k, at),
    ),
  )


@_plain
def _prefixes(shape, seed):
  """(bit, 23-bit prefix as int64) from one int32 word per element."""
  word = tf.random.stateless_uniform(
    shape, seed, minval=None, maxval=None, dtype=tf.int32
  )
  return word < 0, tf.cast(tf.bitwise.bitwise_and(word, _PREFIX_MASK), tf.int64)


@_plain
def _tail_rest(positions, negative, prefix, a, m_at, positive_values, seed):
  """`signed_tail` for the elements the first word did not settle.

  A rejected (B = 1, X = 0) element is drawn afresh (sign, word and all)
  in the next pass; only those are carried.

  Returns:
    `(negative, beyond, below)` for `positions`.
  """

  def step(stream, state):
    at, negative, prefix, fresh = state
    new_negative, new_prefix = _prefixes(
      tf.shape(at), randomness.substream(stream, 1)
    )
    sign = tf.where(fresh, new_negative, negative)
    bits = tf.where(fresh, new_prefix, prefix)
    m = tf.maximum(_int64(m_at(at, sign)), 0)
    beyond, below, zero = _tail_draw(
      m, sign, bits, a, positive_values, randomness.substream(stream, 2)
    )
    rejected = tf.logical_and(sign, zero)
    return (
      tf.logical_not(rejected),
      (sign, beyond, below),
      (at, sign, bits, tf.ones_like(fresh)),
    )

  return _per_element(
    (positions, negative, prefix, tf.zeros_like(negative)),
    step,
    randomness.substream(seed, _STREAM_RETRY),
    (tf.bool, tf.bool, tf.int64),
  )


@_plain
def _tail_draw(m, negative, prefix, a, positive_values, seed):
  """[X >= m], X where needed and [X = 0], for X ~ Geometric.

  Where m < a, CKS Algorithm 1 for exp(-m/a) continues from the 23 bits
  `prefix` (which the first word may have conditioned on being below the
  cut, which is only ever below 2**23 when every m of that sign is below
  a), and X given X < m is drawn where needed (`truncated_geometric`).
  Where m >= a (the prefix then carries no information and is unused):
  with `positive_values`, X itself (`geometric`), which gives both; without,
  [X >= 1] (Bernoulli(exp(-1/a))) for sign -, then X - 1 >= m - 1, which is
  geometric again, by Bernoulli(exp(-(m - 1)/a)); for sign +, [X >= m].
  X is needed where X < m for sign - (to reject X = 0) and, with
  `positive_values`, for sign + too; elsewhere `below` is 0.

  Returns:
    `(beyond, below, zero)`: bool, int64 and bool, shaped like `m`.
  """
  near = m < a

  def with_prefix(m, negative, prefix):
    beyond = exp_bernoulli(m, a, randomness.substream(seed, 1), prefix)
    needed = tf.logical_not(beyond)
    if not positive_values:
      needed = tf.logical_and(needed, negative)
    below = _subset_update(
      tf.zeros_like(m),
      needed,
      lambda at: truncated_geometric(
        tf.maximum(tf.gather(m, at), 1), a, randomness.substream(seed, 2)
      ),
    )
    zero = tf.logical_and(needed, tf.equal(below, 0))
    return beyond, below, zero

  def far(m, negative, prefix):
    del prefix  # uniform and unread: every m of its sign may be >= a
    if positive_values:
      x = geometric(tf.shape(m), a, randomness.substream(seed, 3))
      beyond = x >= m
      return beyond, tf.where(beyond, tf.zeros_like(x), x), tf.equal(x, 0)
    # [X >= 1] for sign - (True for sign +), then [X >= m] given it.
    at_least_one = tf.logical_or(
      tf.logical_not(negative),
      bernoulli_exp(tf.ones_like(m), a, randomness.substream(seed, 4)),
    )
    rest = m - tf.cast(negative, tf.int64)
    beyond = _subset_update(
      tf.zeros_like(negative),
      at_least_one,
      lambda at: bernoulli_exp(
        tf.gather(rest, at), a, randomness.substream(seed, 5)
      ),
    )
    return beyond, tf.zeros_like(m), tf.logical_not(at_least_one)

  return _split(
    near, with_prefix, far, (m, negative, prefix), (tf.bool, tf.int64, tf.bool)
  )


@_plain
def _split(mask, if_true, if_false, inputs, dtypes):
  """Applies `if_true` where `mask` and `if_false` elsewhere (1-D inputs).

  Each function takes a tuple of 1-D tensors and returns one of `dtypes`,
  elementwise; a side with no elements is skipped.
  """
  index = tf.range(tf.size(mask))
  part = tf.cast(mask, tf.int32)
  pieces = [tf.dynamic_partition(t, part, 2) for t in inputs]

  def side(fn, i):
    args = [p[i] for p in pieces]
    return tf.cond(
      tf.size(args[0]) > 0,
      lambda: tuple(fn(*args)),
      lambda: tuple(tf.zeros([0], dtype) for dtype in dtypes),
    )

  outputs = (side(if_false, 0), side(if_true, 1))
  where = tf.dynamic_partition(index, part, 2)
  return tuple(
    tf.dynamic_stitch(where, [low, high])
    for low, high in zip(*outputs, strict=True)
  )
