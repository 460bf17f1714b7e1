"""How many values a client shares, and the sparse vector technique's budget.

The one TF-free place for these numbers: the TensorFlow mechanisms
(`selective_sharing`, `sparse_vector`) and the planning code (`planning`,
`compute_privacy.py`) both read them from here.

* c = ⌈q·N⌉ values of an N-value update are shared (q the shared fraction;
  Li et al. 2019, "Privacy-preserving Federated Brain Tumour
  Segmentation").
* The sparse vector technique with numeric answers (Lyu, Su & Li 2017,
  "Understanding the Sparse Vector Technique for Differential Privacy",
  PVLDB 10(6), Algorithm 1; DESIGN.md "Privacy", step 5) splits its selection
  budget ε into ε1 = ε / (1 + (2c)^(2/3)) for the noisy threshold and
  ε2 = ε − ε1 for the queries (the split Lyu et al. derive for c answers to
  non-monotonic queries), and spends ε3 on the released values. With every
  value clipped to [−γ, γ] the Laplace scales are γ/ε1 (threshold), 2cγ/ε2
  (each query) and 2cγ/ε3 (each released value); one call is (ε + ε3, 0)-DP.
* The SVT runs on a lattice (`sparse_vector_lattice`): values are integer
  multiples of Δ = 2^e in [−GΔ, GΔ], GΔ <= γ, and the noise is discrete
  Laplace with integer scales a1 >= G/ε1, a2 >= 2cG/ε2, a3 >= 2cG/ε3, so the
  ε each part really spends (G/a1, 2cG/a2, 2cG/a3) is at most its share.
"""

from __future__ import annotations

import dataclasses
import fractions
import math

from tff_brats.utils import checks

# The lattice has G in [2^16, 2^17) steps per clip bound unless the noise
# scales would exceed MAX_SCALE (then fewer).
RESOLUTION_BITS = 16
MAX_SCALE = 2**48  # `discrete.MAX_SCALE`: the exact samplers' largest scale
MAX_THRESHOLD = 2**60  # τ/Δ, so that every comparison point fits in int64


def shared_count(shared_fraction: float, num_values: int) -> int:
  """c = ⌈q·N⌉, in exact decimal arithmetic.

  q is read as the shortest decimal that gives back the float (Python's
  `repr`), so 0.1 × 30 is 3, not 4 (the binary value of 0.1 is slightly
  above 1/10). Always in [1, N] for q in (0, 1] and N >= 1.

  Raises:
    ValueError: q not in (0, 1] or N not a positive integer.
  """
  checks.check_fraction('shared_fraction', shared_fraction)
  checks.check_positive_int('num_values', num_values)
  exact = fractions.Fraction(repr(float(shared_fraction))) * int(num_values)
  return max(1, min(int(num_values), math.ceil(exact)))


@dataclasses.dataclass(frozen=True)
class SparseVectorBudget:
  """The budget split and Laplace scales of one SVT call for one client.

  Attributes:
    shared_count: c, the most values released.
    clip_bound: γ, every value is clipped to [−γ, γ].
    selection_epsilon: ε, for the threshold and the queries.
    release_epsilon: ε3, for the released values.
    threshold_epsilon: ε1 = ε / (1 + (2c)^(2/3)).
    query_epsilon: ε2 = ε − ε1.
    threshold_scale: γ / ε1, the scale of the threshold noise ρ.
    query_scale: 2cγ / ε2, the scale of each query's noise.
    release_scale: 2cγ / ε3, the scale of each released value's noise.
    epsilon_per_round: ε + ε3 (one call is (ε + ε3, 0)-DP).
  """

  shared_count: int
  clip_bound: float
  selection_epsilon: float
  release_epsilon: float
  threshold_epsilon: float
  query_epsilon: float
  threshold_scale: float
  query_scale: float
  release_scale: float
  epsilon_per_round: float


def sparse_vector_budget(
  *,
  shared_count: int,
  clip_bound: float,
  selection_epsilon: float,
  release_epsilon: float,
) -> SparseVectorBudget:
  """The SVT's budget split and noise scales for c = `shared_count`.

  Raises:
    ValueError: An argument out of range, naming it and the value.
  """
  checks.check_positive_int('shared_count', shared_count)
  for name, value in (
    ('clip_bound', clip_bound),
    ('selection_epsilon', selection_epsilon),
    ('release_epsilon', release_epsilon),
  ):
    checks.check_positive_number(name, value)
  c, gamma = int(shared_count), float(clip_bound)
  epsilon, epsilon3 = float(selection_epsilon), float(release_epsilon)
  threshold_epsilon = epsilon / (1.0 + (2.0 * c) ** (2.0 / 3.0))
  query_epsilon = epsilon - threshold_epsilon
  return SparseVectorBudget(
    shared_count=c,
    clip_bound=gamma,
    selection_epsilon=epsilon,
    release_epsilon=epsilon3,
    threshold_epsilon=threshold_epsilon,
    query_epsilon=query_epsilon,
    threshold_scale=gamma / threshold_epsilon,
    query_scale=2.0 * c * gamma / query_epsilon,
    release_scale=2.0 * c * gamma / epsilon3,
    epsilon_per_round=epsilon + epsilon3,
  )


@dataclasses.dataclass(frozen=True)
class SparseVectorLattice:
  """The integer form of one SVT call (see `sparse_vector_lattice`).

  Attributes:
    exponent: e, the lattice spacing is Δ = 2^e (exact in float32).
    bound: G = ⌊γ/Δ⌋; integer values are clipped to [−G, G].
    threshold: T = τ/Δ rounded to the nearest integer (ties to even).
    threshold_scale: a1 = ⌈G/ε1⌉, the discrete Laplace scale of ρ.
    query_scale: a2 = ⌈2cG/ε2⌉, of each query's noise.
    release_scale: a3 = ⌈2cG/ε3⌉, of each released value's noise.
    threshold_epsilon: G/a1 <= ε1, what the threshold really spends.
    query_epsilon: 2cG/a2 <= ε2.
    release_epsilon: 2cG/a3 <= ε3.
  """

  exponent: int
  bound: int
  threshold: int
  threshold_scale: int
  query_scale: int
  release_scale: int
  threshold_epsilon: float
  query_epsilon: float
  release_epsilon: float

  @property
  def spacing(self) -> float:
    """Δ = 2^e."""
    return math.ldexp(1.0, self.exponent)


def sparse_vector_lattice(
  scales: SparseVectorBudget,
  threshold: float,
  resolution_bits: int = RESOLUTION_BITS,
) -> SparseVectorLattice:
  """The lattice and integer noise scales of an SVT call, exactly.

  Δ = 2^e with e = ⌊log2 γ⌋ − g, so G = ⌊γ/Δ⌋ is in [2^g, 2^(g+1)); g is
  `resolution_bits`, lowered while a scale would exceed `MAX_SCALE`. The
  scales are rounded up in exact rational arithmetic from the float ε1 and
  from ε2 = ε − ε1, so G/a1 + 2cG/a2 <= ε and 2cG/a3 <= ε3 hold exactly.

  Args:
    scales: The call's budget (`sparse_vector_budget`).
    threshold: τ >= 0.
    resolution_bits: g, at least 1 (tests use small lattices).

  Raises:
    ValueError: No lattice fits (γ below float32's range, τ/Δ or a scale
      too large), naming the parameter and its value.
  """
  checks.check_positive_int('resolution_bits', resolution_bits)
  checks.check_non_negative_number('threshold', threshold)
  gamma = fractions.Fraction(scales.clip_bound)
  epsilon1 = fractions.Fraction(scales.threshold_epsilon)
  epsilon2 = fractions.Fraction(scales.selection_epsilon) - epsilon1
  epsilon3 = fractions.Fraction(scales.release_epsilon)
  c = scales.shared_count
  top = math.frexp(scales.clip_bound)[1] - 1  # ⌊log2 γ⌋
  bits = int(resolution_bits)
  while True:
    exponent = top - bits
    spacing = fractions.Fraction(2) ** exponent
    bound = math.floor(gamma / spacing)
    a1 = math.ceil(bound / epsilon1)
    a2 = math.ceil(2 * c * bound / epsilon2)
    a3 = math.ceil(2 * c * bound / epsilon3)
    if max(a1, a2, a3) <= MAX_SCALE:
      break
    if bits == 1:
      raise ValueError(
        'The sparse vector technique needs noise scales of at most 2^48 '
        f'lattice steps; with c = {c:,}, selection_epsilon = '
        f'{scales.selection_epsilon!r} and release_epsilon = '
        f'{scales.release_epsilon!r} even a 2-step lattice needs '
        f'{max(a1, a2, a3):,}. Use larger epsilons or a smaller shared '
        'fraction.'
      )
    bits -= 1
  if exponent < -149:
    raise ValueError(
      f'clip_bound must be at least 2^-{147 - bits} for a lattice float32 '
      f'represents. Found {scales.clip_bound!r}.'
    )
  units = round(fractions.Fraction(threshold) / spacing)
  if units > MAX_THRESHOLD:
    raise ValueError(
      f'threshold must be at most 2^60 lattice steps of {float(spacing)!r} '
      f'(clip_bound / 2^{bits}). Found {threshold!r}.'
    )
  return SparseVectorLattice(
    exponent=exponent,
    bound=bound,
    threshold=units,
    threshold_scale=a1,
    query_scale=a2,
    release_scale=a3,
    threshold_epsilon=float(fractions.Fraction(bound, a1)),
    query_epsilon=float(fractions.Fraction(2 * c * bound, a2)),
    release_epsilon=float(fractions.Fraction(2 * c * bound, a3)),
  )
