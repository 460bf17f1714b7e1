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
  below n / 2**62), else reduced mod n.
* `bernoulli_exp(m, a)`: Bernoulli(exp(-m/a)) for integers m >= 0: the
  whole part as ⌊m/a⌋ Bernoulli(exp(-1)) draws, the fraction γ = (m mod a)/a
  by CKS Algorithm 1 (K = 1; while Bernoulli(γ/K): K += 1; return K odd),
  where Bernoulli(γ/K) = Bernoulli(γ) ∧ Bernoulli(1/K), both rational.
* X ~ Geometric: P(X >= m) = q^m, so "X >= m" is `bernoulli_exp(m, a)`, and
  X is memoryless: X - m given X >= m is again geometric.
* `truncated_geometric(m, a)`: X given X < m.
* `geometric(a)`: CKS Algorithm 2 (U uniform in {0, …, a - 1} accepted with
  probability exp(-U/a), V the number of Bernoulli(exp(-1)) successes before
  the first failure, X = U + a·V).
* `discrete_laplace(a)`: a fair sign bit B and X ~ Geometric, (B = 1, X = 0)
  rejected; the value is (1 - 2B)·X.

`signed_tail` is the vectorised form the SVT needs for millions of values
at once: for each element, ν ~ DL(a) as (B, X), whether X >= m_B for
per-element integers m_0, m_1, and X itself when it is smaller. One 32-bit
word per element settles almost every element: its top bit is B and its
low 23 bits are the first bits R of the uniform of the first step of
CKS Algorithm 1 for exp(-m/a), which ends there ("X >= m") when that
uniform is at least m/a, certainly so when R >= ⌈m_max·2**23 / a⌉ for the
largest m of the element's sign. The other 8 bits are left to the caller. The few other elements (a fraction of
about m_max/a) continue the same algorithm exactly from R.

Loops are `tf.while_loop`s over masks: each iteration draws for every
element still undecided, from its own stream (`randomness.substream` of the
iteration). Every loop ends with probability 1 and after few iterations in
expectation. Integer ranges: scales up to `MAX_SCALE` = 2**48 and
comparison points up to 2**62 keep every product within int64; a
geometric value overflows only if more than 2**13 successive
Bernoulli(exp(-1)) draws succeed (probability e**-8192).
"""

from __future__ import annotations

from collections.abc import Callable
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
_STREAM_SECOND_WORD = 14
_STREAM_FIRST_STEP = 11
_STREAM_TAIL = 12
_STREAM_RETRY = 13


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
def uniform_below(n: Any, seed: tf.Tensor) -> tf.Tensor:
  """Exactly uniform integers in [0, n), elementwise.

  Args:
    n: int64 tensor (any shape) of bounds in [1, 2**62].
    seed: A `[2]` int64 seed.

  Returns:
    int64 tensor shaped like `n`.
  """
  n = _int64(n)
  limit = ((1 << 62) // n) * n  # largest multiple of n <= 2**62

  # Rejections (probability below n / 2**62 each) are drawn again.
  def draw(stream):
    word = tf.random.stateless_uniform(
      tf.shape(n), stream, minval=None, maxval=None, dtype=tf.int64
    )
    bits = tf.bitwise.bitwise_and(word, _WORD_MASK)
    return tf.math.floormod(bits, n), bits < limit

  return _until_accepted(tf.shape(n), draw, seed)


@_plain
def bernoulli_rational(num: Any, den: Any, seed: tf.Tensor) -> tf.Tensor:
  """Bernoulli(num/den), elementwise, for integers 0 <= num <= den."""
  den = _int64(den) + tf.zeros_like(_int64(num))
  return uniform_below(den, seed) < _int64(num)


@_plain
def bernoulli_exp(
  m: Any, a: Any, seed: tf.Tensor, first_k: Any = None
) -> tf.Tensor:
  """Bernoulli(exp(-m/a)), elementwise, exactly.

  ⌊m/a⌋ runs of CKS Algorithm 1 for exp(-1), stopping at the first that
  fails, then one for exp(-(m mod a)/a). A run for exp(-γ), γ = num/den in
  [0, 1]: K = 1; while Bernoulli(γ/K) (= Bernoulli(num/den) ∧
  Bernoulli(1/K)): K += 1; the run succeeds when K is odd. One loop does
  every step of every run.

  Args:
    m: int64 tensor; values <= 0 give True.
    a: int64 scale in [1, MAX_SCALE], scalar or shaped like `m`.
    seed: A `[2]` int64 seed.
    first_k: Optional int64 tensor like `m`: where above 1 (only allowed
      where 0 < m < a), the first `first_k - 1` draws of the run for the
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

  # Only the elements still running are carried (a shrinking list), and
  # finished ones are collected and written once at the end: the work of
  # a pass is proportional to the elements still in it.
  def body(i, at, k, whole, fraction, a, done_at, done_value):
    stream = randomness.substream(seed, i)
    in_whole = whole > 0
    num = tf.where(in_whole, a, fraction)
    go_on = tf.logical_and(
      bernoulli_rational(num, a, randomness.substream(stream, 1)),
      tf.equal(uniform_below(k, randomness.substream(stream, 2)), 0),
    )
    ended = tf.logical_not(go_on)
    run_ok = tf.equal(tf.math.floormod(k, 2), 1)
    # A whole run that fails ends everything (False); one that succeeds
    # starts the next run; the fraction's run gives the result.
    finished = tf.logical_and(
      ended, tf.logical_or(tf.logical_not(in_whole), tf.logical_not(run_ok))
    )
    done_at = done_at.write(tf.cast(i, tf.int32), tf.boolean_mask(at, finished))
    done_value = done_value.write(
      tf.cast(i, tf.int32), tf.boolean_mask(run_ok, finished)
    )
    next_run = tf.logical_and(ended, tf.logical_not(finished))
    whole = tf.where(next_run, whole - 1, whole)
    k = tf.where(next_run, tf.ones_like(k), k + 1)
    going = tf.logical_not(finished)
    return (
      i + 1,
      *(tf.boolean_mask(t, going) for t in (at, k, whole, fraction, a)),
      done_at,
      done_value,
    )

  vector = tf.TensorShape([None])
  pieces = dict(size=0, dynamic_size=True, infer_shape=False)
  *_, done_at, done_value = _loop(
    lambda i, at, *_: tf.size(at) > 0,
    body,
    (
      tf.constant(0, tf.int64),
      tf.range(tf.size(m, out_type=tf.int64)),
      k,
      whole,
      fraction,
      a,
      tf.TensorArray(tf.int64, **pieces),
      tf.TensorArray(tf.bool, **pieces),
    ),
    (tf.TensorShape([]), vector, vector, vector, vector, vector, None, None),
  )
  result = tf.scatter_nd(
    done_at.concat()[:, None], done_value.concat(), tf.shape(m, tf.int64)
  )
  return tf.reshape(result, shape)


@_plain
def geometric(shape: Any, a: Any, seed: tf.Tensor) -> tf.Tensor:
  """X with P(X = x) = (1 - q)·q^x, x >= 0, q = exp(-1/a): CKS Algorithm 2.

  U uniform in [0, a), accepted with probability exp(-U/a); V the number
  of Bernoulli(exp(-1)) successes before the first failure; X = U + a·V.

  Args:
    shape: Output shape.
    a: int64 scalar scale in [1, MAX_SCALE].
    seed: A `[2]` int64 seed.

  Returns:
    An int64 tensor.
  """
  a = _int64(a)
  size = tf.reduce_prod(_int64(shape))
  vector = tf.TensorShape([None])

  pieces = dict(size=0, dynamic_size=True, infer_shape=False)
  loop_shapes = (tf.TensorShape([]), vector, None, None)

  # U: uniform in [0, a), accepted with probability exp(-U/a). Only the
  # elements still drawing are carried; accepted ones are collected.
  def draw_u(i, at, done_at, done_u):
    stream = randomness.substream(randomness.substream(seed, 0), i)
    candidate = uniform_below(
      tf.fill(tf.shape(at), a), randomness.substream(stream, 1)
    )
    accepted = exp_bernoulli(candidate, a, randomness.substream(stream, 2))
    slot = tf.cast(i, tf.int32)
    done_at = done_at.write(slot, tf.boolean_mask(at, accepted))
    done_u = done_u.write(slot, tf.boolean_mask(candidate, accepted))
    return i + 1, tf.boolean_mask(at, tf.logical_not(accepted)), done_at, done_u

  everyone = tf.range(size)
  _, _, u_at, u_value = _loop(
    lambda i, at, *_: tf.size(at) > 0,
    draw_u,
    (
      tf.constant(0, tf.int64),
      everyone,
      tf.TensorArray(tf.int64, **pieces),
      tf.TensorArray(tf.int64, **pieces),
    ),
    loop_shapes,
  )

  # V: Bernoulli(exp(-1)) successes before the first failure; an element
  # that fails its (j+1)-th draw has V = j.
  def count_v(j, at, done_at, done_v):
    stream = randomness.substream(randomness.substream(seed, 1), j)
    success = bernoulli_exp(tf.ones(tf.shape(at), tf.int64), 1, stream)
    failed = tf.boolean_mask(at, tf.logical_not(success))
    slot = tf.cast(j, tf.int32)
    done_at = done_at.write(slot, failed)
    done_v = done_v.write(slot, tf.fill(tf.shape(failed), j))
    return j + 1, tf.boolean_mask(at, success), done_at, done_v

  _, _, v_at, v_value = _loop(
    lambda j, at, *_: tf.size(at) > 0,
    count_v,
    (
      tf.constant(0, tf.int64),
      everyone,
      tf.TensorArray(tf.int64, **pieces),
      tf.TensorArray(tf.int64, **pieces),
    ),
    loop_shapes,
  )
  total = tf.reshape(size, [1])
  u = tf.scatter_nd(u_at.concat()[:, None], u_value.concat(), total)
  v = tf.scatter_nd(v_at.concat()[:, None], v_value.concat(), total)
  return tf.reshape(u + a * tf.minimum(v, _MAX_RUN), shape)


@_plain
def truncated_geometric(m: Any, a: Any, seed: tf.Tensor) -> tf.Tensor:
  """X ~ Geometric (as in `geometric`) given X < m, elementwise.

  For m <= a: V uniform in [0, m), accepted with probability exp(-V/a)
  (at least 1/e); for m > a: X ~ `geometric`, accepted when X < m (at
  least 1 - 1/e). Rejected elements are drawn again.

  Args:
    m: int64 tensor of bounds >= 1.
    a: int64 scalar scale in [1, MAX_SCALE].
    seed: A `[2]` int64 seed.

  Returns:
    int64 tensor shaped like `m`, in [0, m).
  """
  m = _int64(m)
  a = _int64(a)
  small = m <= a

  def draw(stream):
    uniform = uniform_below(
      tf.where(small, m, tf.ones_like(m)), randomness.substream(stream, 1)
    )
    accepted = exp_bernoulli(uniform, a, randomness.substream(stream, 2))

    def with_geometric():
      x = geometric(tf.shape(m), a, randomness.substream(stream, 3))
      return tf.where(small, uniform, x), tf.where(small, accepted, x < m)

    return tf.cond(
      tf.reduce_all(small), lambda: (uniform, accepted), with_geometric
    )

  return _until_accepted(tf.shape(m), draw, seed)


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
    negative = _sign_bits(shape, randomness.substream(stream, 1))
    x = geometric(shape, a, randomness.substream(stream, 2))
    accepted = tf.logical_not(tf.logical_and(negative, tf.equal(x, 0)))
    return tf.where(negative, -x, x), accepted

  return _until_accepted(shape, draw, seed)


@_plain
def _sign_bits(shape, seed):
  word = tf.random.stateless_uniform(
    shape, seed, minval=None, maxval=None, dtype=tf.int32
  )
  return word < 0


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
def _below(m, negative, beyond, positive_values, a, stream, seed):
  """X given X < m where it is needed (else 0), drawn only there.

  Needed where X < m, for sign - (to reject X = 0) and, if
  `positive_values`, for sign + too.
  """
  needed = tf.logical_not(beyond)
  if not positive_values:
    needed = tf.logical_and(needed, negative)
  return _subset_update(
    tf.zeros_like(m),
    needed,
    lambda at: truncated_geometric(
      tf.maximum(tf.gather(m, at), 1), a, randomness.substream(seed, stream)
    ),
  )


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
def exp_bernoulli(
  m: Any, a: Any, seed: tf.Tensor, prefix: Any = None
) -> tf.Tensor:
  """`bernoulli_exp(m, a)`, its first two steps vectorised.

  CKS Algorithm 1 for exp(-m/a) with m < a: step K = 1 (Bernoulli(m/a))
  from a uniform whose first 23 bits are `prefix` (drawn here if None) ends
  it (True) for all but a fraction m/a; step K = 2 (Bernoulli(m/a) ∧
  Bernoulli(1/2)) from one 32-bit word ends it (False) for all but a
  fraction of about m/2a of those; the rest, and every m >= a, go through
  `bernoulli_exp`, gathered.
  """
  m = tf.maximum(_int64(m), 0)
  a = _int64(a)
  has_prefix = m < a
  small_m = tf.where(has_prefix, m, tf.zeros_like(m))
  if prefix is None:
    prefix = _prefixes(tf.shape(m), randomness.substream(seed, _STREAM_WORD))[1]
  half, second_prefix = _prefixes(
    tf.shape(m), randomness.substream(seed, _STREAM_SECOND_WORD)
  )
  # Steps K = 1 and K = 2 in one call: Bernoulli(m/a) from each prefix.
  both = _step(
    tf.concat([small_m, small_m], axis=0),
    a,
    tf.concat([prefix, second_prefix], axis=0),
    randomness.substream(seed, _STREAM_FIRST_STEP),
  )
  first, second = tf.split(both, 2)
  second = tf.logical_and(half, second)
  # K = 1 ends: True. K = 2 ends: False. Else from K = 3, or afresh.
  result = tf.logical_or(tf.logical_not(has_prefix), tf.logical_not(first))
  generic = tf.logical_or(
    tf.logical_not(has_prefix), tf.logical_and(first, second)
  )
  first_k = tf.where(has_prefix, 3 * tf.ones_like(m), tf.ones_like(m))
  return _subset_update(
    result,
    generic,
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

  Pass 0 continues CKS Algorithm 1 for exp(-m/a) from the first word's 23
  bits (`exp_bernoulli`); a rejected (B = 1, X = 0) element is drawn
  afresh (sign, word and all) in the next pass.
  """
  retry_seed = randomness.substream(seed, _STREAM_RETRY)

  def body(i, negative, beyond, below, pending):
    stream = randomness.substream(retry_seed, i)
    first = tf.equal(i, 0)
    fresh_negative, fresh_prefix = _prefixes(
      tf.shape(positions), randomness.substream(stream, 1)
    )
    sign = tf.where(first, negative, fresh_negative)
    bits = tf.where(first, prefix, fresh_prefix)
    m = tf.maximum(_int64(m_at(positions, sign)), 0)
    new_beyond = exp_bernoulli(m, a, randomness.substream(stream, 2), bits)
    new_below = _below(m, sign, new_beyond, positive_values, a, 3, stream)
    negative = tf.where(pending, sign, negative)
    beyond = tf.where(pending, new_beyond, beyond)
    below = tf.where(pending, new_below, below)
    rejected = tf.logical_and(
      sign, tf.logical_and(tf.logical_not(new_beyond), tf.equal(new_below, 0))
    )
    return i + 1, negative, beyond, below, tf.logical_and(pending, rejected)

  _, negative, beyond, below, _ = _loop(
    lambda i, negative, beyond, below, pending: tf.reduce_any(pending),
    body,
    (
      tf.constant(0, tf.int64),
      negative,
      tf.zeros_like(negative),
      tf.zeros_like(prefix),
      tf.ones_like(negative),
    ),
  )
  return negative, beyond, below
