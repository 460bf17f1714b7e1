"""Patient-level DP-SGD at every institution (local training is private)."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import ClassVar

import dp_accounting
import tensorflow_federated as tff

from tff_brats.learning import dp_sgd_training
from tff_brats.mechanisms import base
from tff_brats.privacy import dp_sgd
from tff_brats.privacy import planning

UNIT_CAVEAT = (
  'The unit of privacy is one case (one patient in BraTS): ε bounds what '
  'the update reveals about adding or removing one case of the '
  "institution's training data. A patient with k cases at one institution "
  'is protected as a group of k (group privacy: up to k·ε at k·e^((k-1)ε)·δ).'
)
PUBLIC_SIZE_CAVEAT = (
  "Each institution's number of cases n is treated as public: the "
  "coordinator's manifest lists it, and the noisy gradient sum is divided "
  'by the expected lot size q·n.'
)
FLOAT_NOISE_CAVEAT = (
  'The Gaussian noise is drawn in floating point (float32 '
  'tf.random.stateless_normal added to the float32 sum of clipped '
  'gradients); the accountant assumes exact real-valued noise, which floats '
  'only approximate (Mironov 2012).'
)


@dataclasses.dataclass(frozen=True)
class DpSgd(base.PrivacyMechanism):
  """DP-SGD inside every institution (Abadi et al. 2016), per patient.

  Every client trains with `dp_sgd_training.DpSgdTrainer`: T =
  `local_steps` steps per round, each over a secret Poisson lot of its
  cases (probability q), one gradient per case clipped to L2 norm C, the
  lot's sum plus N(0, (zC)²) divided by q·n. The update it sends is
  post-processing of those noisy steps, so the guarantee holds against
  whoever sees it (the coordinator included) and needs no secure
  aggregation. Each round is `SelfComposedDpEvent(PoissonSampledDpEvent(q,
  GaussianDpEvent(z)), T)` for adding or removing one case; the ledger
  composes an institution's rounds into ε per patient.

  The updates are averaged unweighted (`tff.aggregators.MeanFactory` with
  the clients' weights, which are all T).

  Attributes:
    noise_multiplier: z >= 0 (0: no noise, ε = ∞).
    l2_norm_clip: C > 0, the L2 bound of one case's gradient.
    sampling_probability: q in (0, 1], each case's chance to be in a lot.
    local_steps: T >= 1, the steps of a round.
  """

  name: ClassVar[str] = 'dp_sgd'
  title: ClassVar[str] = (
    'Patient-level DP-SGD at every institution (Abadi et al. 2016)'
  )
  unit: ClassVar[str] = 'patient'
  solvable: ClassVar[tuple[str, ...]] = ('noise_multiplier',)
  required: ClassVar[tuple[str, ...]] = ('noise_multiplier',)

  noise_multiplier: float | None = None
  l2_norm_clip: float = 0.1
  sampling_probability: float = 0.25
  local_steps: int = 8

  def __post_init__(self):
    self._check_required()
    dp_sgd.check_parameters(
      noise_multiplier=self.noise_multiplier,
      l2_norm_clip=self.l2_norm_clip,
      sampling_probability=self.sampling_probability,
      local_steps=self.local_steps,
    )
    for name in ('noise_multiplier', 'l2_norm_clip', 'sampling_probability'):
      object.__setattr__(self, name, float(getattr(self, name)))
    object.__setattr__(self, 'local_steps', int(self.local_steps))

  def dp_event(self) -> dp_accounting.DpEvent:
    if self.noise_multiplier == 0:
      return dp_accounting.NonPrivateDpEvent()
    return dp_sgd.round_event(
      self.noise_multiplier, self.sampling_probability, self.local_steps
    )

  def guarantee_text(self) -> str:
    if self.noise_multiplier == 0:
      return 'no DP guarantee (ε = ∞)'
    return (
      f'{self.local_steps} Poisson-sampled Gaussian steps per round '
      f'(z = {self.noise_multiplier:g}, q = {self.sampling_probability:g}), '
      'per patient'
    )

  @property
  def caveats(self) -> tuple[str, ...]:
    return (UNIT_CAVEAT, PUBLIC_SIZE_CAVEAT, FLOAT_NOISE_CAVEAT)

  def client_training(
    self, noise_seed: int | None
  ) -> dp_sgd_training.DpSgdOptions:
    return dp_sgd_training.DpSgdOptions(
      noise_multiplier=self.noise_multiplier,
      l2_norm_clip=self.l2_norm_clip,
      sampling_probability=self.sampling_probability,
      local_steps=self.local_steps,
      noise_seed=noise_seed,
    )

  def aggregation_factory(
    self,
    *,
    weighted: bool = True,
    clients_per_round: int | None = None,
    noise_seed: int | None = None,
    diagnostics: bool = False,
  ):
    """The plain mean: the privacy is in the clients' training."""
    del clients_per_round, noise_seed, diagnostics  # nothing to calibrate
    if weighted:
      return tff.aggregators.MeanFactory()
    return tff.aggregators.UnweightedMeanFactory()

  def describe(self, num_values: int | None) -> dict[str, Any]:
    del num_values  # the noise does not depend on it
    return {
      'noise_stddev': self.noise_multiplier * self.l2_norm_clip,
      'steps_per_round': self.local_steps,
      'sampling_probability': self.sampling_probability,
    }

  def describe_lines(self, num_values: int | None) -> list[str]:
    del num_values  # unused
    return [
      f'{self.title},',
      'per patient (one case) of a participating institution and round:',
      f'  {self.local_steps} local steps, each a Poisson lot with q = '
      f'{self.sampling_probability:g}',
      f'  per-case L2 clip C = {self.l2_norm_clip:g}, noise multiplier z = '
      f'{self.noise_multiplier:.6g} (stddev zC = '
      f'{self.noise_multiplier * self.l2_norm_clip:.6g} on each lot sum)',
    ]

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
    """The smallest noise multiplier that meets the target (PLD)."""
    base.check_solvable(cls, parameter)
    defaults = cls(noise_multiplier=1.0, **parameters)
    value = planning.solve_noise_multiplier(
      target_epsilon=target_epsilon,
      delta=delta,
      num_rounds=num_rounds,
      method='pld',
      sampling_probability=defaults.sampling_probability,
      steps_per_round=defaults.local_steps,
    )
    mechanism = cls.from_parameters({**parameters, parameter: value})
    return base.Solution(mechanism, parameter, value, 'pld')
