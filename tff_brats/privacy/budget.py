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
"""

from __future__ import annotations

import dataclasses
import fractions
import math

from tff_brats.utils import checks


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
