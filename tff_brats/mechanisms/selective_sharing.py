"""Selective parameter sharing (Shokri & Shmatikov 2015); no DP claim."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import ClassVar

import dp_accounting
import tensorflow as tf

from tff_brats.mechanisms import client_side
from tff_brats.privacy import budget
from tff_brats.privacy import selective_sharing
from tff_brats.utils import checks


@dataclasses.dataclass(frozen=True)
class SelectiveSharing(client_side.ClientSideMechanism):
  """Each client releases the c = ⌈q·N⌉ largest clipped values exactly.

  Shokri & Shmatikov 2015, "Privacy-preserving deep learning" (CCS), the
  partial-sharing baseline of Li et al. 2019. It limits what is sent but
  makes no differential-privacy claim: the released values are exact.

  Attributes:
    shared_fraction: q in (0, 1].
    clip_bound: γ > 0; every value is clipped to [-γ, γ] before selection.
    normalize_by_steps: Clip and select on ΔW / n, then multiply by n.
  """

  name: ClassVar[str] = 'selective_sharing'
  title: ClassVar[str] = 'Selective sharing (Shokri & Shmatikov 2015)'

  shared_fraction: float = 0.1
  clip_bound: float = 1e-3
  normalize_by_steps: bool = True

  def __post_init__(self):
    checks.check_fraction('shared_fraction', self.shared_fraction)
    checks.check_positive_number('clip_bound', self.clip_bound)
    checks.check_bool('normalize_by_steps', self.normalize_by_steps)
    object.__setattr__(self, 'shared_fraction', float(self.shared_fraction))
    object.__setattr__(self, 'clip_bound', float(self.clip_bound))
    object.__setattr__(
      self, 'normalize_by_steps', bool(self.normalize_by_steps)
    )

  def dp_event(self) -> dp_accounting.DpEvent:
    return dp_accounting.NonPrivateDpEvent()

  def shared_count(self, num_values: int) -> int:
    """c = ⌈q·N⌉ (`budget.shared_count`)."""
    return budget.shared_count(self.shared_fraction, num_values)

  def privatize(
    self, update: Any, local_steps: Any, *, seed: Any = None
  ) -> tuple[Any, dict[str, tf.Tensor]]:
    del seed  # no randomness
    return self._release(update, local_steps, selective_sharing.select)

  def describe(self, num_values: int | None) -> dict[str, Any]:
    if num_values is None:
      return {}
    return {'shared_count': self.shared_count(num_values)}

  def describe_lines(self, num_values: int | None) -> list[str]:
    lines = [f'{self.title}: no DP guarantee, ε = inf per round.']
    if num_values is not None:
      lines.append(
        f'  releases c = ⌈qN⌉ = {self.shared_count(num_values):,} of N = '
        f'{num_values:,} values (q = {self.shared_fraction:g}), clipped to '
        f'±γ = {self.clip_bound:g}'
      )
    return lines
