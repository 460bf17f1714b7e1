"""No privacy: every client sends its update unchanged (a baseline)."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import ClassVar

import dp_accounting
import tensorflow as tf

from tff_brats.mechanisms import client_side
from tff_brats.privacy import client_release


@dataclasses.dataclass(frozen=True)
class NoPrivacy(client_side.ClientSideMechanism):
  """Sends the update unchanged; no privacy claim (ε = ∞)."""

  name: ClassVar[str] = 'none'
  title: ClassVar[str] = 'No privacy (plain FedAvg)'

  def dp_event(self) -> dp_accounting.DpEvent:
    return dp_accounting.NonPrivateDpEvent()

  def privatize(
    self, update: Any, local_steps: Any, *, seed: Any = None
  ) -> tuple[Any, dict[str, tf.Tensor]]:
    del local_steps, seed  # nothing to normalise, no noise
    return client_release.unchanged(update)
