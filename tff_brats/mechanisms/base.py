"""What every privacy mechanism of a federated run knows about itself.

A mechanism is one frozen dataclass (`NoPrivacy`, `SelectiveSharing`,
`SparseVector`, `Gaussian`): its fields are its parameters, validated once
when it is built ("X must …. Found Y."). Everything that depends on the
mechanism asks the object; no code compares a mechanism's name:

* `aggregation_factory(...)`: the `tff.learning` model aggregator, weighted
  (by local steps) or unweighted, as TFF's own presets build theirs;
* `dp_event()`: what one round guarantees one participating client, as a
  dp_accounting `DpEvent` (`NonPrivateDpEvent` for no guarantee), which the
  ledger composes (`tff_brats.privacy.accounting`);
* `caveats`: what the guarantee does not cover, printed wherever ε is;
* `unit`: whose privacy ε protects ('institution' or 'patient'), printed
  with every ε;
* `client_training(noise_seed)`: None, or the options of a private local
  training (DP-SGD) that every client runs instead of the plain one;
* `describe(num_values)`: the internals a planner prints
  (`experiments/compute_privacy.py`);
* `solve(...)`: the parameter that meets a target ε (for the mechanisms
  that have one);
* `to_dict()` / `registry.from_dict(...)`: the JSON form (hparams.json).

The mathematics stay in `tff_brats.privacy` (plain TensorFlow, no TFF); a
mechanism only chooses and wires them. Adding a mechanism means adding one
class (and its tests) and listing it in `registry.MECHANISMS`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any
from typing import ClassVar

import dp_accounting

from tff_brats.privacy import accounting
from tff_brats.privacy import events

# How each unit of privacy is printed beside an ε ("ε per ...").
UNIT_TEXT = {
  'institution': 'per institution',
  'patient': 'per patient (one case of an institution)',
}


def unit_text(unit: str) -> str:
  """'per institution' or 'per patient (...)': what an ε protects."""
  if unit not in UNIT_TEXT:
    raise ValueError(
      f'unit must be one of {", ".join(UNIT_TEXT)}. Found {unit!r}.'
    )
  return UNIT_TEXT[unit]


@dataclasses.dataclass(frozen=True)
class Solution:
  """A mechanism solved for a target ε (see `PrivacyMechanism.solve`).

  Attributes:
    mechanism: The mechanism with the solved parameter.
    parameter: The parameter's name.
    value: Its value.
    method: How ε was composed ('pld' or 'rdp').
  """

  mechanism: PrivacyMechanism
  parameter: str
  value: float
  method: str


class PrivacyMechanism(abc.ABC):
  """The interface of a privacy mechanism (see the module docstring).

  Subclasses are frozen dataclasses whose fields are the parameters.
  """

  # The name used by flags, hparams.json and the ledger's tables.
  name: ClassVar[str]
  # A one-line description with the paper it comes from.
  title: ClassVar[str]
  # Parameters `solve` can solve for (empty: none).
  solvable: ClassVar[tuple[str, ...]] = ()
  # Parameters without a usable default (None until given).
  required: ClassVar[tuple[str, ...]] = ()
  # Whose privacy ε protects: 'institution' (adding or removing an
  # institution's whole contribution) or 'patient' (one case of it).
  unit: ClassVar[str] = 'institution'

  def _check_required(self) -> None:
    """Raises ValueError naming the first required parameter left None."""
    for name in self.required:
      if getattr(self, name) is None:
        raise ValueError(f'{name} must be given for {self.name}. Found None.')

  # ------------------------------------------------------------ guarantee

  @abc.abstractmethod
  def dp_event(self) -> dp_accounting.DpEvent:
    """What one round guarantees one participating client."""

  def record(self) -> accounting.PrivacyRecord:
    """`dp_event()` as the ledger's record of one round."""
    return accounting.PrivacyRecord(self.name, self.dp_event())

  @property
  def has_guarantee(self) -> bool:
    """Whether a round makes a DP claim (ε < ∞)."""
    return not events.is_non_private(self.dp_event())

  def guarantee_text(self) -> str:
    """The round's guarantee in words, e.g. '(ε = 2, δ = 0) per round'."""
    event = self.dp_event()
    if events.is_non_private(event):
      return 'no DP guarantee (ε = ∞)'
    if isinstance(event, events.EpsilonDeltaDpEvent):
      return f'(ε = {event.epsilon:g}, δ = {event.delta:g}) per round'
    return f'{event} per round'

  @property
  def caveats(self) -> tuple[str, ...]:
    """What the guarantee does not cover (for every printed ε)."""
    return ()

  # -------------------------------------------------------------- wiring

  def client_training(self, noise_seed: int | None) -> Any | None:
    """How clients train under this mechanism: None for plain training.

    A mechanism that privatises the local training itself (DP-SGD) returns
    the clients' options (`learning.dp_sgd_training.DpSgdOptions`).
    """
    del noise_seed  # unused
    return None

  @abc.abstractmethod
  def aggregation_factory(
    self,
    *,
    weighted: bool = True,
    clients_per_round: int | None = None,
    noise_seed: int | None = None,
    diagnostics: bool = False,
  ):
    """The `model_aggregator` of a `tff.learning` algorithm.

    Args:
      weighted: A `tff.aggregators.WeightedAggregationFactory` (the weight
        is the client's local steps) or an `UnweightedAggregationFactory`.
      clients_per_round: Clients aggregated per round (mechanisms whose
        noise is calibrated to it need it).
      noise_seed: None (the default, and the only choice in a deployment):
        fresh noise from the operating system in every round and client. An
        int makes the noise reproducible for experiments and voids the
        guarantee.
      diagnostics: Also measure what the mechanism has but must not send in
        a deployment (clipped fractions, noisy thresholds); simulations
        only.
    """

  # ------------------------------------------------------------ planning

  def describe(self, num_values: int | None) -> dict[str, Any]:
    """The internals of one round for an update of `num_values` values.

    Returns:
      A JSON-ready dict (empty when there is nothing to add); keys are the
      internals' names (e.g. `shared_count`, `release_scale`).
    """
    del num_values  # unused
    return {}

  def describe_lines(self, num_values: int | None) -> list[str]:
    """`describe(num_values)` as lines of text (the planner's report)."""
    lines = [f'{self.title}, per institution and round:']
    lines.append(f'  {self.guarantee_text()}')
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
  ) -> Solution:
    """The mechanism whose `parameter` meets `target_epsilon` at `delta`.

    Args:
      parameter: One of `solvable`.
      target_epsilon: The total ε an institution may spend.
      delta: Its δ.
      num_rounds: Rounds the institution takes part in.
      **parameters: The mechanism's other parameters.

    Raises:
      ValueError: `parameter` is not solvable for this mechanism, or no
        value meets the target.
    """
    del target_epsilon, delta, num_rounds, parameters  # unused
    check_solvable(cls, parameter)
    raise NotImplementedError(
      f'{cls.name} lists {parameter} as solvable but does not solve it.'
    )

  # ---------------------------------------------------------------- JSON

  def to_dict(self) -> dict[str, Any]:
    """`{"name": ..., <parameter>: <value>, ...}`."""
    return {'name': self.name, **dataclasses.asdict(self)}

  @classmethod
  def parameter_names(cls) -> tuple[str, ...]:
    """The mechanism's parameters (its dataclass fields), in order."""
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_parameters(cls, parameters: dict[str, Any]) -> PrivacyMechanism:
    """The mechanism from a dict of its parameters (unknown keys rejected).

    Raises:
      ValueError: An unknown or missing (`required`) parameter, or an
        invalid value.
    """
    names = cls.parameter_names()
    unknown = sorted(set(parameters) - set(names))
    if unknown:
      raise ValueError(
        f'{cls.name} has no parameter {unknown[0]!r}; its parameters are '
        f'{", ".join(names) or "none"}. Found {parameters!r}.'
      )
    return cls(**parameters)


def check_solvable(cls: type[PrivacyMechanism], parameter: str) -> None:
  """Raises ValueError unless `cls` can solve for `parameter`."""
  if parameter not in cls.solvable:
    choices = ', '.join(cls.solvable) or 'nothing'
    raise ValueError(
      f'solve_for must be one of the parameters {cls.name} can solve for '
      f'({choices}). Found {parameter!r}.'
    )
