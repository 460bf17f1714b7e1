"""The sparse vector technique with numeric answers, per client and round."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import ClassVar

import dp_accounting
import tensorflow as tf

from tff_brats.mechanisms import base
from tff_brats.mechanisms import client_side
from tff_brats.privacy import budget
from tff_brats.privacy import events
from tff_brats.privacy import planning
from tff_brats.privacy import randomness
from tff_brats.privacy import sparse_vector
from tff_brats.utils import checks


@dataclasses.dataclass(frozen=True)
class SparseVector(client_side.ClientSideMechanism):
  """SVT (Lyu, Su & Li 2017) on every client's clipped update.

  Lyu, Su & Li 2017, "Understanding the Sparse Vector Technique for
  Differential Privacy" (PVLDB 10(6)), Algorithm 1 with numeric answers, as
  Li et al. 2019 use it: at most c = ⌈q·N⌉ values pass noisy threshold
  tests and are released with noise, all exactly on a lattice with discrete
  Laplace noise drawn in integer arithmetic (`tff_brats.privacy.
  sparse_vector`; budget split, lattice and scales in `tff_brats.privacy.
  budget`). One round is (ε + ε3, 0)-DP for the client, for changes of its
  data that keep its step count n (`caveats`), with no floating-point
  caveat.

  NVFlare's `SVTPrivacy` flaws (issues #343, #1214, #4470) are avoided: no
  value is released without its noise, released coordinates are a subset
  (no sampling with replacement), the scan stops at the c-th pass, and the
  ε reported is the one the noise gives.

  Attributes:
    shared_fraction: q in (0, 1]; at most c = ⌈q·N⌉ values are released.
    clip_bound: γ > 0; values are clipped to [-γ, γ] (the sensitivity).
    selection_epsilon: ε > 0, split into ε1 (threshold) and ε2 (queries).
    release_epsilon: ε3 > 0, for the noise on the released values.
    threshold: τ >= 0, compared with |w_i| + noise.
    normalize_by_steps: Work on ΔW / n, then multiply by n.
  """

  name: ClassVar[str] = 'sparse_vector'
  title: ClassVar[str] = 'Sparse vector technique (Lyu, Su & Li 2017)'
  solvable: ClassVar[tuple[str, ...]] = ('release_epsilon', 'selection_epsilon')
  required: ClassVar[tuple[str, ...]] = ('selection_epsilon', 'release_epsilon')

  shared_fraction: float = 0.1
  clip_bound: float = 1e-3
  selection_epsilon: float | None = None
  release_epsilon: float | None = None
  threshold: float = 0.0
  normalize_by_steps: bool = True

  def __post_init__(self):
    self._check_required()
    checks.check_fraction('shared_fraction', self.shared_fraction)
    for name in ('clip_bound', 'selection_epsilon', 'release_epsilon'):
      checks.check_positive_number(name, getattr(self, name))
    checks.check_non_negative_number('threshold', self.threshold)
    checks.check_bool('normalize_by_steps', self.normalize_by_steps)
    for name in (
      'shared_fraction',
      'clip_bound',
      'selection_epsilon',
      'release_epsilon',
      'threshold',
    ):
      object.__setattr__(self, name, float(getattr(self, name)))
    object.__setattr__(
      self, 'normalize_by_steps', bool(self.normalize_by_steps)
    )

  def dp_event(self) -> dp_accounting.DpEvent:
    """(ε + ε3, 0)-DP per round (see the class docstring)."""
    return events.EpsilonDeltaDpEvent(
      self.selection_epsilon + self.release_epsilon, 0.0
    )

  def shared_count(self, num_values: int) -> int:
    """c = ⌈q·N⌉ (`budget.shared_count`)."""
    return budget.shared_count(self.shared_fraction, num_values)

  def noise_budget(self, num_values: int) -> budget.SparseVectorBudget:
    """ε1, ε2 and the Laplace scales for an update of N values."""
    return budget.sparse_vector_budget(
      shared_count=self.shared_count(num_values),
      clip_bound=self.clip_bound,
      selection_epsilon=self.selection_epsilon,
      release_epsilon=self.release_epsilon,
    )

  def privatize(
    self, update: Any, local_steps: Any, *, seed: Any = None
  ) -> tuple[Any, dict[str, tf.Tensor]]:
    seed = randomness.fresh_seed() if seed is None else randomness.as_seed(seed)

    def release(flat, steps, bound, count):
      del bound  # the SVT clips |w_i| itself, after normalising
      return sparse_vector.sparse_vector(
        flat,
        steps,
        shared_count=count,
        clip_bound=self.clip_bound,
        threshold=self.threshold,
        selection_epsilon=self.selection_epsilon,
        release_epsilon=self.release_epsilon,
        seed=seed,
      )

    return self._release(update, local_steps, release)

  def describe(self, num_values: int | None) -> dict[str, Any]:
    if num_values is None:
      return {}
    internals = dataclasses.asdict(self.noise_budget(num_values))
    for repeated in ('clip_bound', 'selection_epsilon', 'release_epsilon'):
      del internals[repeated]
    return internals

  def describe_lines(self, num_values: int | None) -> list[str]:
    lines = [
      f'{self.title}, per institution and round:',
      f'  (ε = {self.selection_epsilon + self.release_epsilon:.6g}, δ = 0)-DP: '
      f'selection ε = {self.selection_epsilon:.6g} + release ε3 = '
      f'{self.release_epsilon:.6g}',
    ]
    if num_values is None:
      lines.append('  (give num_values or init_filters for the internals)')
      return lines
    b = self.noise_budget(num_values)
    lines += [
      f'  N = {num_values:,} values; q = {self.shared_fraction:g}: '
      f'c = ⌈qN⌉ = {b.shared_count:,} released at most',
      f'  threshold: ε1 = ε/(1+(2c)^(2/3)) = {b.threshold_epsilon:.6g}, '
      f'Laplace scale γ/ε1 = {b.threshold_scale:.6g}',
      f'  queries:   ε2 = ε − ε1 = {b.query_epsilon:.6g}, '
      f'Laplace scale 2cγ/ε2 = {b.query_scale:.6g}',
      f'  release:   ε3 = {self.release_epsilon:.6g}, '
      f'Laplace scale 2cγ/ε3 = {b.release_scale:.6g}',
      f'  (γ = {self.clip_bound:g}; threshold τ = {self.threshold:g} does not '
      'enter ε)',
    ]
    try:
      lattice = budget.sparse_vector_lattice(b, self.threshold)
    except ValueError as e:
      lines.append('  no exact lattice for these parameters:')
      lines.append(f'    {e}')
    else:
      lines += [
        f'  exact noise: lattice Δ = 2^{lattice.exponent}, values in '
        f'[−G, G]·Δ, G = {lattice.bound:,};',
        f'    discrete Laplace scales (lattice steps) a1 = '
        f'{lattice.threshold_scale:,},',
        f'    a2 = {lattice.query_scale:,}, a3 = {lattice.release_scale:,}',
        f'  spent exactly: G/a1 + 2cG/a2 = '
        f'{lattice.threshold_epsilon + lattice.query_epsilon:.6g} <= ε, '
        f'2cG/a3 = {lattice.release_epsilon:.6g} <= ε3',
        '  (pure ε-DP on the lattice, no floating-point caveat)',
      ]
    lines.append('  N sets c and the noise scales, not ε.')
    return lines

  @classmethod
  def solve(
    cls,
    parameter: str,
    *,
    target_epsilon: float,
    delta: float,
    num_rounds: int,
    **parameters: Any,
  ) -> base.Solution:
    """Solves ε3 given ε, or ε given ε3 (tight PLD composition)."""
    base.check_solvable(cls, parameter)
    other = (
      'selection_epsilon'
      if parameter == 'release_epsilon'
      else 'release_epsilon'
    )
    if parameters.get(other) is None:
      raise ValueError(
        f'{other} must be given to solve for {parameter}. Found None.'
      )
    kwargs = dict(
      target_epsilon=target_epsilon,
      delta=delta,
      num_rounds=num_rounds,
      method='pld',
    )
    if parameter == 'release_epsilon':
      value = planning.solve_release_epsilon(
        selection_epsilon=parameters[other], **kwargs
      )
    else:
      value = planning.solve_selection_epsilon(
        release_epsilon=parameters[other], **kwargs
      )
    mechanism = cls.from_parameters({**parameters, parameter: value})
    return base.Solution(mechanism, parameter, value, 'pld')
