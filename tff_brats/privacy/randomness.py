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

Exactness: the samplers draw only integers and compare integers
(`discrete`): no floating-point rounding touches the noise, so the
mechanisms' guarantees hold for the values they really release, up to the
quality of the random bits above.
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
REST_QUERY_STREAM = 7
REST_ORDER_STREAM = 8
REST_VISIT_STREAM = 9

_URANDOM = '/dev/urandom'
_SEED_BYTES = 16


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


def ordered_by(keys: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The order of uniform int32 `keys`, ties broken uniformly at random.

  Each key is refined by 32 fresh random bits (the key and its refinement
  are the first 64 bits of one uniform real); if two refined keys are
  still equal (probability below n² · 2**-65) every refinement is drawn
  again. Independent uniform keys thus give a uniformly random order, and
  any keys give the order of their refinements.

  Args:
    keys: int32 `[n]`.
    seed: A `[2]` int64 seed.

  Returns:
    int64 `[n]`: positions of `keys` in increasing order.
  """
  high = tf.bitwise.left_shift(tf.cast(keys, tf.int64), 32)
  shape = tf.shape(keys)

  def draw(i):
    fresh = tf.random.stateless_uniform(
      shape, substream(seed, i), minval=None, maxval=None, dtype=tf.int32
    )
    low = tf.bitwise.bitwise_and(tf.cast(fresh, tf.int64), 0xFFFFFFFF)
    refined = high + low
    order = tf.argsort(refined, stable=True)
    ordered = tf.gather(refined, order)
    return order, tf.reduce_any(tf.equal(ordered[1:], ordered[:-1]))

  def body(i, order, ties):
    order, ties = draw(i)
    return i + 1, order, ties

  first, ties = draw(tf.constant(0, tf.int64))
  _, order, _ = tf.while_loop(
    lambda i, order, ties: ties,
    body,
    (tf.constant(1, tf.int64), first, ties),
  )
  return tf.cast(order, tf.int64)
