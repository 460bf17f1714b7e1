"""Regression test for floating-point noise (Mironov 2012), issue 11.

Enumerates the reachable float32 outputs of one released value, and their
probabilities, for two neighbouring inputs w = 3e-5 and w' = -7e-5 with
the README's example budget (c = 470,223, γ = 1e-4, ε3 = 0.1). A release
is ε3/c-DP per value only if every output reachable from one input is
reachable from the other with a probability ratio at most e^(ε3/c).

* The release before issue 11, float32(clip(w) + Laplace(b)) with the
  Laplace drawn by inverting a float64 uniform on the grid (2i + 1)·2^-53,
  fails: near 1e-6 the two inputs reach disjoint sets of outputs, and near
  2e-5 some output is 1.2 times likelier under one input.
* The lattice release of `sparse_vector` passes: every output is r·Δ for an
  integer r (Δ = 2^e), the float32 value is exactly r·Δ (one output per r),
  every r in [-G, G] is reachable from every input, and the ratio of
  P(r | x) ∝ exp(-|r - x|/a3) between x and x' is at most
  exp(|x - x'|/a3) <= exp(2G/a3) <= exp(ε3/c).
"""

import collections
import math

import numpy as np
import tensorflow as tf

from tff_brats.privacy import budget
from tff_brats.privacy import sparse_vector

_C = 470_223
_GAMMA = 1e-4
_EPSILON3 = 0.1
_W, _W_PRIME = 3e-5, -7e-5
_SCALE = 2 * _C * _GAMMA / _EPSILON3  # b ≈ 940.4


def _float_laplace_outputs(w, low, high):
  """{float32 output: number of uniforms} of the old release in [low, high].

  The old sampler: u = (2i + 1)·2^-53, v = u - 1/2, noise =
  -b·sign(v)·log1p(-2|v|), output float32(clip(w + noise, -γ, γ)).
  Enumerates every i whose output falls in the window.
  """
  counts = collections.Counter()

  def index_of(noise):
    # The inverse of the noise, as a grid index (noise is increasing in i).
    u = 0.5 + 0.5 * math.copysign(1.0, noise) * -math.expm1(
      -abs(noise) / _SCALE
    )
    return int(u * 2.0**52)

  first = index_of(low - w) - 64
  last = index_of(high - w) + 64
  i = np.arange(first, last + 1, dtype=np.float64)
  v = (2.0 * i + 1.0) * 2.0**-53 - 0.5  # exact near 1/2
  noise = -_SCALE * np.sign(v) * np.log1p(-2.0 * np.abs(v))
  out = np.clip(w + noise, -_GAMMA, _GAMMA).astype(np.float32)
  out = out[(out >= np.float32(low)) & (out <= np.float32(high))]
  values, number = np.unique(out, return_counts=True)
  counts.update(dict(zip(values.tolist(), number.tolist(), strict=True)))
  return counts


def _worst_log_ratio(p, p_prime):
  """max |log(P(y)/P'(y))| over outputs y of either; inf if one lacks it."""
  worst = 0.0
  for y in set(p) | set(p_prime):
    if not p.get(y) or not p_prime.get(y):
      return math.inf
    worst = max(worst, abs(math.log(p[y] / p_prime[y])))
  return worst


def test_float_laplace_release_leaks_the_input():
  # Near 1e-6: disjoint reachable sets (one output names its input).
  low, high = 1e-6, 1e-6 + 2000 * 2.0**-43  # 2000 float32 steps
  near_zero = _worst_log_ratio(
    _float_laplace_outputs(_W, low, high),
    _float_laplace_outputs(_W_PRIME, low, high),
  )
  assert near_zero == math.inf
  # Near 2e-5 (float32 step 2^-39, coarser than the noise grid): shared
  # outputs, but with probability ratios far above e^(ε3/c) = 1 + 2e-7.
  low, high = 2e-5, 2e-5 + 200 * 2.0**-39
  p = _float_laplace_outputs(_W, low, high)
  p_prime = _float_laplace_outputs(_W_PRIME, low, high)
  shared = set(p) & set(p_prime)
  assert shared
  ratio = max(max(p[y] / p_prime[y], p_prime[y] / p[y]) for y in shared)
  assert ratio > 1.2


def test_lattice_release_does_not_leak_the_input():
  scales = budget.sparse_vector_budget(
    shared_count=_C,
    clip_bound=_GAMMA,
    selection_epsilon=1.0,
    release_epsilon=_EPSILON3,
  )
  lattice = budget.sparse_vector_lattice(scales, threshold=0.0)
  # The implementation's own quantiser: x = round(clip(w)/Δ).
  values = sparse_vector._Lattice(  # pylint: disable=protected-access
    tf.constant([_W, _W_PRIME], tf.float32), None, lattice
  )
  x, x_prime = values.at(tf.constant([0, 1], tf.int64)).numpy().tolist()
  a3, bound = lattice.release_scale, lattice.bound
  assert abs(x - x_prime) <= 2 * bound
  for low in (1e-6, 2e-5):
    high = low + 100 * lattice.spacing
    first = math.ceil(low / lattice.spacing)
    last = math.floor(high / lattice.spacing)
    r = np.arange(first, last + 1)
    assert r.size > 0 and np.all(np.abs(r) <= bound)
    # The float32 output of r is exactly r·Δ, one per r: the output tells
    # nothing beyond r.
    floats = r.astype(np.float32) * np.float32(lattice.spacing)
    np.testing.assert_array_equal(
      floats.astype(np.float64), r * lattice.spacing
    )
    assert np.unique(floats).size == r.size
    # log P(r | x) - log P(r | x') = (|r - x'| - |r - x|)/a3 (same
    # normalising constant; r inside (-G, G), no clipping).
    log_ratio = (np.abs(r - x_prime) - np.abs(r - x)) / a3
    assert np.abs(log_ratio).max() <= 2 * bound / a3 <= _EPSILON3 / _C
