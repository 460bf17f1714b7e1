"""Mechanisms that privatise each client's update before it leaves it.

Li et al. 2019 ("Privacy-preserving Federated Brain Tumour Segmentation"):
every institution runs the mechanism on its own model update at CLIENTS, so
the coordinator only ever sees privatised updates (local privacy). Their
aggregator is `tff_brats.aggregators.private_sharing.PrivateSharingFactory`
(weighted by local steps) or `UnweightedPrivateSharingFactory`, which call
`privatize` on each client's update and hand the results to a mean.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import tensorflow as tf

from tff_brats.aggregators import private_sharing
from tff_brats.mechanisms import base
from tff_brats.privacy import client_release
from tff_brats.privacy import events

# Said wherever a weighted client-side guarantee is printed.
STEP_COUNT_CAVEAT = (
  "The guarantee holds for changes of an institution's data that keep its "
  'local step count n, which is sent in the clear (it is the aggregation '
  'weight and rescales the release); an unweighted run (a fixed public '
  'weight, no normalisation by steps) removes this caveat.'
)


class ClientSideMechanism(base.PrivacyMechanism):
  """A mechanism each client runs on its own update (see the module doc)."""

  normalize_by_steps: bool = False

  @abc.abstractmethod
  def privatize(
    self, update: Any, local_steps: Any, *, seed: Any = None
  ) -> tuple[Any, dict[str, tf.Tensor]]:
    """Privatises one client's update (traceable TensorFlow).

    Args:
      update: ΔW, a nest of float tensors with static shapes.
      local_steps: n, the client's local step count.
      seed: None for fresh, unpredictable noise (the default and the only
        choice in a deployment), or an int64 `[2]` seed that makes the
        noise reproducible (experiments only: it voids the guarantee).

    Returns:
      `(privatized, report)`; see `tff_brats.privacy.client_release`.
    """

  def _release(
    self, update: Any, local_steps: Any, release: client_release.Release
  ) -> tuple[Any, dict[str, tf.Tensor]]:
    """`client_release.privatize` with this mechanism's q, γ and ε.

    For the subclasses with `shared_fraction` and `clip_bound` fields.
    """
    return client_release.privatize(
      update,
      local_steps,
      release,
      shared_fraction=self.shared_fraction,
      clip_bound=self.clip_bound,
      normalize_by_steps=self.normalize_by_steps,
      epsilon=self.epsilon_per_round,
    )

  @property
  def epsilon_per_round(self) -> float:
    """ε of one round (+inf without a DP claim), for the factory's state."""
    event = self.dp_event()
    if events.is_non_private(event):
      return math.inf
    return float(event.epsilon)

  def aggregation_factory(
    self,
    *,
    weighted: bool = True,
    clients_per_round: int | None = None,
    noise_seed: int | None = None,
    diagnostics: bool = False,
  ):
    """`PrivateSharingFactory` (weighted) or its unweighted twin.

    Unweighted runs send no step count, so they never normalise by steps
    (the mechanism is used with `normalize_by_steps=False`).
    `clients_per_round` is not needed (every client privatises alone).
    """
    del clients_per_round  # the noise does not depend on it
    if weighted:
      return private_sharing.PrivateSharingFactory(
        self, noise_seed=noise_seed, diagnostics=diagnostics
      )
    mechanism = self
    if self.normalize_by_steps:
      mechanism = dataclasses.replace(self, normalize_by_steps=False)
    return private_sharing.UnweightedPrivateSharingFactory(
      mechanism, noise_seed=noise_seed, diagnostics=diagnostics
    )

  @property
  def caveats(self) -> tuple[str, ...]:
    if not self.has_guarantee:
      return (f'{self.name} makes no DP claim: ε = inf.',)
    # Weighted runs (the trainers') send n whether or not they normalise.
    return (STEP_COUNT_CAVEAT,)
