"""The hyper-parameters of a federated run (saved as hparams.json)."""

from __future__ import annotations

import dataclasses
from typing import Any

import dp_accounting

from tff_brats.data import pipeline
from tff_brats.learning import fed_avg
from tff_brats.mechanisms import base as mechanisms_base
from tff_brats.models import precision as precision_lib
from tff_brats.models import segresnet
from tff_brats.privacy import accounting
from tff_brats.utils import checks

# Settings that may change when resuming (the run can be extended).
RESUMABLE_CHANGES = ('total_rounds', 'target_epsilon')
FIXED_NOISE_SEED = 'no guarantee (fixed noise seed)'
FIXED_NOISE_SEED_CAVEAT = (
  'This run used a fixed noise seed (noise_seed): its noise is a function of '
  'the seed, the round and the update, which anyone with the seed can '
  'replay, so no round has a DP guarantee (ε = inf).'
)


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
  """Hyper-parameters of a federated run.

  Attributes:
    data_dir: A folder written by `experiments/prepare_data.py`; its
      clients are the institutions.
    mechanism: The privacy mechanism every round runs
      (`tff_brats.mechanisms`: `NoPrivacy`, `SelectiveSharing`,
      `SparseVector`, `Gaussian`); it builds the model aggregator and states
      each round's guarantee.
    total_rounds: Rounds to run.
    clients_per_round: Institutions per round, a seeded sample without
      replacement; None for all of them every round.
    client_epochs_per_round: Local passes over a client's cases per round.
    client_learning_rate: The client Adam's learning rate (state restarts
      every round).
    server_optimizer: 'sgd' (plain FedAvg with server_learning_rate 1) or
      'adam'.
    server_learning_rate: The server optimiser's learning rate.
    crop_size, batch_size, crops_per_case, tumour_crop_probability: The
      clients' input pipeline.
    init_filters: SegResNet's initial filters.
    trainable_layers: None (train everything), or the SegResNet parts that
      train and are shared (`segresnet.part_names`: 'init_conv', 'down0', …,
      'up0', …, 'head'); the others stay at the initial model's values, so
      the update, and the dimension its noise is spread over, shrinks.
    initial_model: A saved model to start from instead of random weights,
      e.g. one pre-trained on public data, of the same architecture: a
      model folder (`final_model/`, `best_model/`), a `.keras` file or an
      exported SavedModel folder (`inference.model_sources`).
    blocks_down, blocks_up: SegResNet's residual blocks per encoder level
      and decoder stage (MONAI's (1, 2, 2, 4) and (1, 1, 1) by default; a
      shorter `blocks_down` gives a shallower, faster model).
    loss: 'dice' or 'dice_bce'.
    precision: 'float32', 'mixed_float16' (GPUs) or 'mixed_bfloat16'.
    target_epsilon: Stop before a round that would take any institution
      past this ε at `delta` (tight composition); None for no limit.
    delta: δ at which ε is reported and checked.
    rounds_per_eval: Validate every this many rounds (and after the last).
    rounds_per_checkpoint: Checkpoint every this many rounds (and after
      the last).
    eval_window, eval_overlap, max_eval_cases, num_overlay_cases: The
      validation (sliding window over whole cases).
    eval_per_institution: Also score the global model on each
      institution's own training cases (at most
      `max_institution_eval_cases` each) when validating.
    max_institution_eval_cases: See above.
    seed: Seed of the initial weights, the client sampling and every
      client's data keys; None draws fresh ones (the sampling seed is then
      drawn once and saved).
    noise_seed: None (default): fresh privacy noise from the operating
      system in every round and client. An int makes the noise
      reproducible, for experiments only: it voids the guarantee, and the
      ledger records every round as "no guarantee (fixed noise seed)".
    diagnostics: Also record clipped fractions and noisy thresholds
      (outside the guarantee; simulations only).
    report_training_statistics: Every client also sends its training loss,
      Dice counts on its crops and non-finite flag, for metrics.csv
      (outside the guarantee; simulations only). By default a client sends
      only its privatised update and its step count.
  """

  data_dir: str
  mechanism: mechanisms_base.PrivacyMechanism
  total_rounds: int = 20
  clients_per_round: int | None = None
  client_epochs_per_round: int = 1
  client_learning_rate: float = 1e-3
  server_optimizer: str = 'sgd'
  server_learning_rate: float = 1.0
  crop_size: tuple[int, int, int] = (64, 64, 64)
  batch_size: int = 1
  crops_per_case: int = 1
  tumour_crop_probability: float = pipeline.DEFAULT_TUMOUR_CROP_PROBABILITY
  init_filters: int = 16
  trainable_layers: tuple[str, ...] | None = None
  initial_model: str | None = None
  blocks_down: tuple[int, ...] = segresnet.DEFAULT_BLOCKS_DOWN
  blocks_up: tuple[int, ...] = segresnet.DEFAULT_BLOCKS_UP
  loss: str = 'dice_bce'
  precision: str = precision_lib.FLOAT32
  target_epsilon: float | None = None
  delta: float = 1e-5
  rounds_per_eval: int = 5
  rounds_per_checkpoint: int = 1
  eval_window: tuple[int, int, int] | None = None
  eval_overlap: float = 0.5
  max_eval_cases: int | None = None
  num_overlay_cases: int = 2
  eval_per_institution: bool = False
  max_institution_eval_cases: int = 4
  seed: int | None = 0
  noise_seed: int | None = None
  diagnostics: bool = False
  report_training_statistics: bool = False

  def __post_init__(self):
    if not isinstance(self.mechanism, mechanisms_base.PrivacyMechanism):
      raise ValueError(
        'mechanism must be a tff_brats.mechanisms privacy mechanism. Found '
        f'{self.mechanism!r}.'
      )
    object.__setattr__(self, 'crop_size', tuple(self.crop_size))
    blocks_down, blocks_up = segresnet.check_blocks(
      self.blocks_down, self.blocks_up
    )
    object.__setattr__(self, 'blocks_down', blocks_down)
    object.__setattr__(self, 'blocks_up', blocks_up)
    if self.trainable_layers is not None:
      object.__setattr__(
        self,
        'trainable_layers',
        segresnet.check_part_names(self.trainable_layers, len(blocks_down)),
      )
    if self.initial_model is not None and not isinstance(
      self.initial_model, str
    ):
      raise ValueError(
        f'initial_model must be a path (model folder, .keras file or SavedModel) or None. Found '
        f'{self.initial_model!r}.'
      )
    if self.eval_window is not None:
      object.__setattr__(self, 'eval_window', tuple(self.eval_window))
    for name in (
      'total_rounds',
      'rounds_per_eval',
      'rounds_per_checkpoint',
      'init_filters',
      'max_institution_eval_cases',
    ):
      checks.check_positive_int(name, getattr(self, name))
    checks.check_non_negative_int('num_overlay_cases', self.num_overlay_cases)
    for name in ('clients_per_round', 'max_eval_cases'):
      if getattr(self, name) is not None:
        checks.check_positive_int(name, getattr(self, name))
    for name in ('seed', 'noise_seed'):
      if getattr(self, name) is not None:
        checks.check_non_negative_int(name, getattr(self, name))
    accounting.check_delta(self.delta)
    if self.target_epsilon is not None:
      checks.check_positive_number('target_epsilon', self.target_epsilon)
      if self.noise_seed is not None:
        raise ValueError(
          'target_epsilon must be None with a fixed noise_seed (predictable '
          'noise has no guarantee to budget). Found '
          f'target_epsilon={self.target_epsilon!r}, '
          f'noise_seed={self.noise_seed!r}.'
        )
    checks.check_one_of(
      'server_optimizer', self.server_optimizer, fed_avg.SERVER_OPTIMIZERS
    )
    checks.check_positive_number(
      'server_learning_rate', self.server_learning_rate
    )
    checks.check_bool('eval_per_institution', self.eval_per_institution)
    checks.check_bool('diagnostics', self.diagnostics)
    if self.eval_window is not None and (
      len(self.eval_window) != 3
      or not all(
        checks.is_int(s) and s > 0 and s % 8 == 0 for s in self.eval_window
      )
    ):
      raise ValueError(
        'eval_window must be 3 positive multiples of 8. '
        f'Found {self.eval_window!r}.'
      )
    self.client_config()  # validates the clients' work

  @property
  def window(self) -> tuple[int, int, int]:
    """The validation window: `eval_window`, or the training crop."""
    return tuple(self.eval_window or self.crop_size)

  def to_json(self) -> dict[str, Any]:
    """JSON-ready hyper-parameters; the mechanism as its `to_dict()`."""
    fields = {
      f.name: getattr(self, f.name)
      for f in dataclasses.fields(self)
      if f.name != 'mechanism'
    }
    return {'privacy_mechanism': self.mechanism.to_dict(), **fields}

  @property
  def fixed_noise(self) -> bool:
    """Whether a fixed noise seed voids the mechanism's guarantee."""
    return self.noise_seed is not None and self.mechanism.has_guarantee

  def round_record(self) -> accounting.PrivacyRecord:
    """What one round guarantees each participating institution: the
    mechanism's record, or no guarantee with a fixed noise seed."""
    if self.fixed_noise:
      return accounting.PrivacyRecord(
        f'{self.mechanism.name} ({FIXED_NOISE_SEED})',
        dp_accounting.NonPrivateDpEvent(),
      )
    return self.mechanism.record()

  def guarantee_text(self) -> str:
    """The round's guarantee in words (see `round_record`)."""
    if self.fixed_noise:
      return FIXED_NOISE_SEED
    return self.mechanism.guarantee_text()

  @property
  def caveats(self) -> tuple[str, ...]:
    """What the guarantee does not cover (the mechanism's, and the seed)."""
    if self.fixed_noise:
      return (*self.mechanism.caveats, FIXED_NOISE_SEED_CAVEAT)
    return tuple(self.mechanism.caveats)

  @property
  def model_config(self) -> dict[str, Any]:
    """`SegResNet` keyword arguments of the run's model."""
    return {
      'init_filters': self.init_filters,
      'blocks_down': self.blocks_down,
      'blocks_up': self.blocks_up,
    }

  def client_config(self) -> fed_avg.ClientConfig:
    """What every client does in a round."""
    return fed_avg.ClientConfig(
      model_config=self.model_config,
      crop_size=self.crop_size,
      batch_size=self.batch_size,
      crops_per_case=self.crops_per_case,
      tumour_crop_probability=self.tumour_crop_probability,
      client_epochs_per_round=self.client_epochs_per_round,
      client_learning_rate=self.client_learning_rate,
      loss=self.loss,
      precision=self.precision,
      report_training_statistics=self.report_training_statistics,
      dp_sgd=self.mechanism.client_training(self.noise_seed),
      trainable_layers=self.trainable_layers,
    )

  def model_aggregator(self, clients_per_round: int):
    """The mechanism's weighted aggregation factory for this run."""
    return self.mechanism.aggregation_factory(
      weighted=True,
      clients_per_round=clients_per_round,
      noise_seed=self.noise_seed,
      diagnostics=self.diagnostics,
    )
