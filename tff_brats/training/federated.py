"""Federated training with privacy: the product's main job.

`train_federated(config, run_dir)` runs weighted FedAvg
(`tff_brats.learning.fed_avg`) over the institutions of a prepared folder,
each client's update privatised by the chosen mechanism before it is
aggregated, on a TFF runtime the trainer owns (`tff_brats.runtime.local`:
started here, stopped on return, error, Ctrl-C or SIGTERM). A run folder
(`<root_output_dir>/<experiment_name>/`) holds

    hparams.json            the arguments of the run
    metrics.csv             one row per round: clients, training loss and
                            Dice on crops, values released, ε spent (worst
                            institution), seconds; on evaluated rounds
                            validation Dice and HD95 per region
    tensorboard/            the same scalars, plus overlay images
    privacy_ledger.json     per institution, every release and its guarantee
    privacy_ledger.txt      the ledger as a per-institution table (ε summed
                            and tight at δ)
    privacy_journal.jsonl   write-ahead log of every round started
    checkpoints/            `tff.program.FileProgramStateManager` states:
                            learning state, ledger, sampling, best model
    best_model/             the global model of the best evaluated round
    exported_model/         best_model as a SavedModel (serving signature)
    final_model/            the global model after the last round
    learning_curves.png     mean validation Dice and ε against rounds
    summary.json            best round and its scores, ε per institution
    logs/                   the TFF worker's log

Privacy accounting. Once a client has computed its privatised update the
release has happened, whether or not the round then completes. Before a
round runs, the trainer appends the round's participants and guarantee to
`privacy_journal.jsonl` (flushed and fsync'd), under a *release number*
that only ever grows. The ledger's rounds are these release numbers. A run
killed mid-round and resumed from its last checkpoint therefore counts the
interrupted round's releases (they may have reached the coordinator) and
then the rerun as a new release: nothing is lost, and a completed,
checkpointed round is never counted twice. In a run that is never
interrupted release r is round r + 1.

`--target_epsilon`: before each round the ledger answers whether any
selected institution would pass the target (tight ε at `delta`); if so the
run stops before that round, saying which institution and what it would
spend.

Resuming (`resume=True`) continues from the last checkpoint: the learning
state, ledger, release counter, sampling seed and best model are restored,
the CSV is cut back to the checkpoint's round, and with integer seeds the
continued run is the one that would have happened without the stop
(client sampling and data keys are functions of (seed, round); explicit
`noise_seed` makes the privacy noise a function of (seed, aggregator round,
update)).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import glob
import json
import math
import os
import shutil
import time
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tqdm

from tff_brats.aggregators import factories
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import pipeline
from tff_brats.evaluation import evaluate
from tff_brats.inference import export
from tff_brats.inference import predict
from tff_brats.learning import client_training
from tff_brats.learning import fed_avg
from tff_brats.models import model_io
from tff_brats.models import precision as precision_lib
from tff_brats.privacy import accounting
from tff_brats.runtime import local
from tff_brats.training import run_outputs
from tff_brats.utils import atomic
from tff_brats.utils import checks

CHECKPOINT_PREFIX = 'program_state_'
JOURNAL_NAME = 'privacy_journal.jsonl'
LEDGER_JSON = 'privacy_ledger.json'
LEDGER_TABLE = 'privacy_ledger.txt'

# Settings that may change when resuming (the run can be extended).
_RESUMABLE_CHANGES = ('total_rounds', 'target_epsilon')


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
  """Hyper-parameters of a federated run (saved as hparams.json).

  Attributes:
    data_dir: A folder written by `experiments/prepare_data.py`; its
      clients are the institutions.
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
    loss: 'dice' or 'dice_bce'.
    precision: 'float32', 'mixed_float16' (GPUs) or 'mixed_bfloat16'.
    privacy_mechanism: 'none', 'selective_sharing', 'sparse_vector' or
      'gaussian' (see README "Privacy").
    shared_fraction: q (selective sharing, SVT).
    clip_bound: γ per value (selective sharing, SVT) or the L2 clip of a
      whole update (gaussian).
    selection_epsilon, release_epsilon, threshold: SVT's ε, ε3 and τ.
    normalize_by_steps: Clip the per-step update ΔW / n (selective sharing,
      SVT).
    noise_multiplier: gaussian: noise stddev / clip.
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
      reproducible, for experiments only: it voids the guarantee.
    diagnostics: Also record clipped fractions and noisy thresholds
      (outside the guarantee; simulations only).
  """

  data_dir: str
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
  loss: str = 'dice_bce'
  precision: str = precision_lib.FLOAT32
  privacy_mechanism: str = 'sparse_vector'
  shared_fraction: float = 0.1
  clip_bound: float = 1e-3
  selection_epsilon: float | None = None
  release_epsilon: float | None = None
  threshold: float = 0.0
  normalize_by_steps: bool = True
  noise_multiplier: float | None = None
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

  def __post_init__(self):
    object.__setattr__(self, 'crop_size', tuple(self.crop_size))
    if self.eval_window is not None:
      object.__setattr__(self, 'eval_window', tuple(self.eval_window))
    for name in ('total_rounds', 'rounds_per_eval', 'rounds_per_checkpoint'):
      checks.check_positive_int(name, getattr(self, name))
    checks.check_positive_int('init_filters', self.init_filters)
    checks.check_positive_int(
      'max_institution_eval_cases', self.max_institution_eval_cases
    )
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
    if self.privacy_mechanism not in factories.PRIVACY_MECHANISMS:
      raise ValueError(
        f'privacy_mechanism must be one of {factories.PRIVACY_MECHANISMS}. '
        f'Found {self.privacy_mechanism!r}.'
      )
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
    # Builds (and so validates) the client work and the aggregator.
    self.client_config()
    fed_avg.build_server_optimizer(
      self.server_optimizer, self.server_learning_rate
    )
    self.model_aggregator(clients_per_round=1)
    self.round_record()

  @property
  def window(self) -> tuple[int, int, int]:
    return tuple(self.eval_window or self.crop_size)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def client_config(self) -> fed_avg.ClientConfig:
    return fed_avg.ClientConfig(
      model_config={'init_filters': self.init_filters},
      crop_size=self.crop_size,
      batch_size=self.batch_size,
      crops_per_case=self.crops_per_case,
      tumour_crop_probability=self.tumour_crop_probability,
      client_epochs_per_round=self.client_epochs_per_round,
      client_learning_rate=self.client_learning_rate,
      loss=self.loss,
      precision=self.precision,
    )

  def model_aggregator(self, clients_per_round: int):
    return factories.build_model_aggregator(
      self.privacy_mechanism,
      shared_fraction=self.shared_fraction,
      clip_bound=self.clip_bound,
      selection_epsilon=self.selection_epsilon,
      release_epsilon=self.release_epsilon,
      threshold=self.threshold,
      normalize_by_steps=self.normalize_by_steps,
      noise_multiplier=self.noise_multiplier,
      clients_per_round=clients_per_round,
      noise_seed=self.noise_seed,
      diagnostics=self.diagnostics,
    )

  def round_record(self) -> accounting.PrivacyRecord:
    """What one round guarantees each participating institution."""
    mode = self.privacy_mechanism
    if mode == 'sparse_vector':
      return accounting.PrivacyRecord.sparse_vector(
        self.selection_epsilon, self.release_epsilon
      )
    if mode == 'gaussian':
      return accounting.PrivacyRecord.gaussian(self.noise_multiplier)
    return accounting.PrivacyRecord.no_guarantee(mode)


def sample_clients(
  client_ids: list[str],
  clients_per_round: int | None,
  seed: int,
  round_num: int,
) -> list[str]:
  """The round's institutions: all, or a sample that is a function of
  (seed, round) alone (so a resumed run samples what it would have)."""
  if clients_per_round is None or clients_per_round >= len(client_ids):
    return list(client_ids)
  rng = np.random.default_rng([seed, round_num])
  picked = rng.choice(len(client_ids), size=clients_per_round, replace=False)
  return [client_ids[i] for i in sorted(picked)]


def train_federated(
  config: FederatedConfig,
  run_dir: str,
  *,
  resume: bool = False,
  progress: bool = True,
) -> dict[str, Any]:
  """Runs federated training; see the module docstring for the outputs.

  Args:
    config: The hyper-parameters.
    run_dir: The run folder (created; must be new unless `resume`).
    resume: Continue the run in `run_dir` from its last checkpoint.
    progress: Show progress bars.

  Returns:
    The content of summary.json.

  Raises:
    ValueError: Bad arguments, an existing run folder without `resume`, or
      a resumed run with other hyper-parameters.
  """
  prepared = manifest_lib.load(config.data_dir)
  client_ids = list(prepared.client_ids)
  if not client_ids:
    raise ValueError(
      f'data_dir must have clients. Found none in {prepared.root!r}.'
    )
  if config.clients_per_round is not None and config.clients_per_round > len(
    client_ids
  ):
    raise ValueError(
      f'clients_per_round must be at most the {len(client_ids)} institutions '
      f'of {prepared.root!r}. Found {config.clients_per_round}.'
    )
  validation = list(prepared.validation)[: config.max_eval_cases]
  if not validation:
    raise ValueError(
      f'data_dir must have validation cases to select the best model. '
      f'Found none in {prepared.root!r}; prepare it with '
      '--validation_fraction or --validation_cases.'
    )
  run_outputs.prepare_run_dir(
    run_dir, config.to_json(), resume=resume, ignore=_RESUMABLE_CHANGES
  )
  per_round = config.clients_per_round or len(client_ids)
  trainer = _Trainer(
    config, run_dir, prepared, client_ids, validation, per_round
  )
  with local.LocalRuntime(
    default_num_clients=per_round, log_dir=os.path.join(run_dir, 'logs')
  ):
    trainer.start(resume)
    trainer.run(progress)
  return trainer.finish()


class _Trainer:
  """The state and steps of one run (see `train_federated`)."""

  def __init__(
    self, config, run_dir, prepared, client_ids, validation, per_round
  ):
    self.config = config
    self.run_dir = run_dir
    self.prepared = prepared
    self.client_ids = client_ids
    self.validation = validation
    self.per_round = per_round
    self.record = config.round_record()
    self.csv = run_outputs.MetricsCsv(run_dir, 'round')
    self.journal_path = os.path.join(run_dir, JOURNAL_NAME)
    self.writer = tf.summary.create_file_writer(
      os.path.join(run_dir, 'tensorboard')
    )
    self.manager = tff.program.FileProgramStateManager(
      os.path.join(run_dir, 'checkpoints'),
      prefix=CHECKPOINT_PREFIX,
      keep_total=2,
    )
    self.client_config = config.client_config()
    self.stopped = None
    self.last_eval = None

  # ---------------------------------------------------------------- setup

  def start(self, resume: bool) -> None:
    started = time.monotonic()
    self.process = fed_avg.build_fed_avg_process(
      self.client_config,
      self.config.model_aggregator(self.per_round),
      server_optimizer=self.config.server_optimizer,
      server_learning_rate=self.config.server_learning_rate,
    )
    # After the process: Keras invalidates models built before others are
    # built inside a graph (TFF traces its computations in graphs).
    if self.config.seed is not None:
      tf.keras.utils.set_random_seed(self.config.seed)
    self.model = self.client_config.build_model()
    self.predict_fn = predict.from_keras_model(self.model)
    state = self.process.initialize()
    self.state = self.process.set_model_weights(state, self._model_weights())
    logging.info(
      'Built the learning process in %.1f s.', time.monotonic() - started
    )
    self.round = 0
    self.next_release = 0
    self.ledger = accounting.PrivacyLedger(client_ids=self.client_ids)
    self.sampling_seed = (
      self.config.seed
      if self.config.seed is not None
      else int.from_bytes(os.urandom(4), 'little')
    )
    self.best_round, self.best_dice = 0, -1.0
    self.best_weights = [v.numpy() for v in self.model.trainable_variables]
    if resume:
      self._restore()
    self.csv.truncate_after(self.round)

  def _model_weights(self):
    return tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in self.model.trainable_variables],
      non_trainable=[v.numpy() for v in self.model.non_trainable_variables],
    )

  def _program_state(self):
    return collections.OrderedDict(
      learning_state=self.state,
      round=np.int64(self.round),
      next_release=np.int64(self.next_release),
      sampling_seed=np.int64(self.sampling_seed),
      ledger=self.ledger.to_json(),
      best_round=np.int64(self.best_round),
      best_dice=np.float64(self.best_dice),
      best_weights=list(self.best_weights),
    )

  def _restore(self) -> None:
    for stale in glob.glob(
      os.path.join(self.run_dir, 'checkpoints', f'{CHECKPOINT_PREFIX}*_temp*')
    ):
      shutil.rmtree(stale, ignore_errors=True)  # a save cut short by a kill
    versions = asyncio.run(self.manager.get_versions())
    if not versions:
      logging.info('No checkpoint in %s: starting at round 0.', self.run_dir)
    else:
      saved = asyncio.run(
        self.manager.load(versions[-1], self._program_state())
      )
      self.state = saved['learning_state']
      self.round = int(saved['round'])
      self.next_release = int(saved['next_release'])
      self.sampling_seed = int(saved['sampling_seed'])
      ledger_json = saved['ledger']
      if isinstance(ledger_json, bytes):
        ledger_json = ledger_json.decode()
      self.ledger = accounting.PrivacyLedger.from_json(ledger_json)
      self.best_round = int(saved['best_round'])
      self.best_dice = float(saved['best_dice'])
      self.best_weights = [np.asarray(w) for w in saved['best_weights']]
      self._set_model(self.process.get_model_weights(self.state).trainable)
      if self.best_round > 0:
        self._save_best_model()
      logging.info('Resumed %s after round %d.', self.run_dir, self.round)
    self._replay_journal()

  def _replay_journal(self) -> None:
    """Counts releases the journal has and the checkpoint does not."""
    interrupted = 0
    for entry in _read_journal(self.journal_path):
      release = entry['release']
      if release < self.next_release:
        continue  # in the checkpoint's ledger already
      record = accounting.PrivacyRecord.from_dict(entry['record'])
      self.ledger.record_round(release, entry['clients'], record)
      self.next_release = release + 1
      interrupted += 1
    if interrupted:
      logging.warning(
        'Counted %d release(s) of rounds that started after the last '
        'checkpoint and did not complete into it: their clients may have '
        'sent privatised updates, so they spend privacy.',
        interrupted,
      )

  # ----------------------------------------------------------------- loop

  def run(self, progress: bool) -> None:
    config = self.config
    bar = tqdm.tqdm(
      total=config.total_rounds,
      initial=self.round,
      desc='rounds',
      unit='round',
      disable=not progress,
    )
    with bar:
      while self.round < config.total_rounds:
        round_num = self.round + 1
        clients = self._clients(round_num)
        over = self._over_budget(clients)
        if over:
          self._stop_at_budget(round_num, clients, over)
          break
        row = self._run_round(round_num, clients)
        bar.set_postfix(loss=f'{row["train_loss"]:.4f}')
        bar.update()

  def _clients(self, round_num: int) -> list[str]:
    return sample_clients(
      self.client_ids,
      self.config.clients_per_round,
      self.sampling_seed,
      round_num,
    )

  def _over_budget(self, clients: list[str]) -> list[str]:
    """Institutions the round would take past `target_epsilon`."""
    if self.config.target_epsilon is None:
      return []
    return self.ledger.would_exceed(
      clients, self.record, self.config.target_epsilon, self.config.delta
    )

  def _is_last_round(self, round_num: int) -> bool:
    """The last round that will run: the total, or the budget's end."""
    if round_num >= self.config.total_rounds:
      return True
    return bool(self._over_budget(self._clients(round_num + 1)))

  def _stop_at_budget(self, round_num, clients, over) -> None:
    config = self.config
    spent = {c: self.ledger.epsilon(c, delta=config.delta) for c in over}
    details = ', '.join(f'{c} (ε now {spent[c]:.4g})' for c in over)
    self.stopped = (
      f'Stopped before round {round_num}: it would take {details} past '
      f'target_epsilon={config.target_epsilon} at delta={config.delta} '
      f'(each round spends {self.record.mechanism} '
      f'{_record_text(self.record)}).'
    )
    logging.warning('%s', self.stopped)

  def _run_round(self, round_num: int, clients: list[str]) -> dict[str, Any]:
    config = self.config
    started = time.monotonic()
    release = self.next_release
    _append_journal(
      self.journal_path,
      {
        'release': release,
        'round': round_num,
        'clients': clients,
        'record': self.record.to_dict(),
      },
    )
    inputs = [
      collections.OrderedDict(
        shard_paths=np.array(self.prepared.shard_paths(c), dtype=object),
        data_key=fed_avg.client_data_key(
          config.seed, round_num, self.client_ids.index(c)
        ),
      )
      for c in clients
    ]
    output = self.process.next(self.state, inputs)
    self.state = output.state
    record = factories.privacy_record(
      self.state.aggregator, config.privacy_mechanism
    )
    if record != self.record:
      raise RuntimeError(
        f'The aggregator reported {record.key} for round {round_num}, but '
        f'the configuration promises {self.record.key}.'
      )
    self.ledger.record_round(release, clients, record)
    self.next_release = release + 1
    self.round = round_num

    metrics = output.metrics
    train = metrics['client_work']['train']
    dice = client_training.pooled_dice(
      train['dice_intersection'], train['dice_predicted'], train['dice_target']
    )
    steps = float(train['steps'])
    worst = self.ledger.worst_case(config.delta)
    row = collections.OrderedDict(
      round=round_num,
      release=release,
      clients=len(clients),
      client_ids=' '.join(clients),
      steps=int(steps),
      train_loss=float(train['loss_sum']) / steps if steps else math.nan,
      train_dice_tc=dice[0],
      train_dice_wt=dice[1],
      train_dice_et=dice[2],
      non_finite_updates=int(train['non_finite']),
      **self._privacy_columns(metrics['aggregator']),
      epsilon_worst=worst[1] if worst else 0.0,
      epsilon_worst_client=worst[0] if worst else '',
    )
    self._set_model(self.process.get_model_weights(self.state).trainable)
    evaluated = None
    last = self._is_last_round(round_num)
    if round_num % config.rounds_per_eval == 0 or last:
      evaluated = self._evaluate(round_num, row)
    else:
      row.update(run_outputs.validation_columns(None))
      if config.eval_per_institution:
        row.update({f'inst_{c}_dice_mean': '' for c in self.client_ids})
    row['seconds'] = round(time.monotonic() - started, 2)
    run_outputs.write_summaries(
      self.writer,
      round_num,
      row,
      evaluated,
      step_key='round',
    )
    self.csv.append(row)
    if round_num % config.rounds_per_checkpoint == 0 or last:
      asyncio.run(self.manager.save(self._program_state(), round_num))
    val = row['val_dice_mean']
    logging.info(
      'round %d/%d: %d clients, loss %.4f, released %s, ε %s (worst: %s), '
      'validation mean Dice %s, %.1f s',
      round_num,
      config.total_rounds,
      len(clients),
      row['train_loss'],
      _count_text(row.get('released_mean')),
      accounting.format_epsilon(row['epsilon_worst']),
      row['epsilon_worst_client'] or '-',
      '-' if val == '' else f'{val:.4f}',
      row['seconds'],
    )
    return row

  def _privacy_columns(self, aggregator_metrics) -> dict[str, Any]:
    if self.config.privacy_mechanism == 'gaussian':
      return {'released_mean': float('nan'), 'epsilon_per_client': ''}
    privatization = aggregator_metrics['privatization']
    columns = {
      'released_mean': float(privatization['released_mean']),
      'released_min': float(privatization['released_min']),
      'released_max': float(privatization['released_max']),
      'epsilon_per_client': float(privatization['epsilon_per_client']),
    }
    if self.config.diagnostics:
      columns['clipped_fraction_mean'] = float(
        privatization['clipped_fraction_mean']
      )
      columns['noisy_threshold_mean'] = float(
        privatization['noisy_threshold_mean']
      )
    return columns

  def _set_model(self, trainable) -> None:
    for variable, value in zip(
      self.model.trainable_variables, trainable, strict=True
    ):
      variable.assign(value)

  def _evaluate(self, round_num: int, row: dict[str, Any]):
    config = self.config
    result = self.last_eval = evaluate.evaluate_prepared(
      self.predict_fn,
      self.prepared,
      self.validation,
      window=config.window,
      overlap=config.eval_overlap,
      num_examples=config.num_overlay_cases,
    )
    row.update(run_outputs.validation_columns(result))
    if config.eval_per_institution:
      for client_id in self.client_ids:
        cases = list(self.prepared.clients[client_id])[
          : config.max_institution_eval_cases
        ]
        own = evaluate.evaluate_prepared(
          self.predict_fn,
          self.prepared,
          cases,
          window=config.window,
          overlap=config.eval_overlap,
        )
        row[f'inst_{client_id}_dice_mean'] = own.mean_dice
    if result.mean_dice > self.best_dice:
      self.best_round, self.best_dice = round_num, result.mean_dice
      self.best_weights = [v.numpy() for v in self.model.trainable_variables]
      self._save_best_model()
    return result

  def _save_best_model(self) -> None:
    current = [v.numpy() for v in self.model.trainable_variables]
    self._set_model(self.best_weights)
    model_io.save_model(
      self.model, os.path.join(self.run_dir, 'best_model'), overwrite=True
    )
    self._set_model(current)

  # --------------------------------------------------------------- finish

  def finish(self) -> dict[str, Any]:
    config, run_dir = self.config, self.run_dir
    # self.model holds the latest global model (set after every round and
    # on restore); the TFF runtime is closed by now.
    model_io.save_model(
      self.model, os.path.join(run_dir, 'final_model'), overwrite=True
    )
    atomic.write_text(
      os.path.join(run_dir, LEDGER_JSON), self.ledger.to_json() + '\n'
    )
    table = self.ledger.table(config.delta)
    atomic.write_text(os.path.join(run_dir, LEDGER_TABLE), table + '\n')
    exported = None
    if self.best_round > 0:
      exported = export.export_model_dir(
        os.path.join(run_dir, 'best_model'),
        os.path.join(run_dir, 'exported_model'),
        overwrite=True,
      )
    rows = self.csv.rows()
    write_learning_curves(
      rows, os.path.join(run_dir, 'learning_curves.png'), config.delta
    )
    epsilons = {
      method: self.ledger.epsilons(config.delta, method)
      for method in ('pld', 'sum')
    }
    last = rows[-1] if rows else {}
    summary = {
      'rounds_completed': self.round,
      'total_rounds': config.total_rounds,
      'stopped': self.stopped,
      'releases': self.next_release,
      'best_round': self.best_round,
      'best_val_dice_mean': self.best_dice if self.best_round else None,
      'final_validation': None
      if self.last_eval is None
      else self.last_eval.summary,
      'validation_cases': len(self.validation),
      'privacy': {
        'mechanism': config.privacy_mechanism,
        'per_round': _record_text(self.record),
        'delta': config.delta,
        'epsilon_tight': _finite_or_none(epsilons['pld']),
        'epsilon_summed': _finite_or_none(epsilons['sum']),
        'rounds_per_institution': {
          c: self.ledger.num_rounds(c) for c in self.client_ids
        },
      },
      'seconds_last_round': float(last['seconds']) if last else None,
      'best_model': os.path.join(run_dir, 'best_model'),
      'exported_model': exported,
      'final_model': os.path.join(run_dir, 'final_model'),
      'privacy_ledger': os.path.join(run_dir, LEDGER_TABLE),
      'learning_curves': os.path.join(run_dir, 'learning_curves.png'),
    }
    atomic.write_text(
      os.path.join(run_dir, 'summary.json'),
      json.dumps(summary, indent=1, sort_keys=True) + '\n',
    )
    return summary


# ------------------------------------------------------------- helpers ----


def _append_journal(path: str, entry: dict[str, Any]) -> None:
  """Appends one JSON line and makes it durable before the round runs."""
  with open(path, 'a') as f:
    f.write(json.dumps(entry, sort_keys=True) + '\n')
    f.flush()
    os.fsync(f.fileno())


def _read_journal(path: str) -> list[dict[str, Any]]:
  """The journal's entries; a last line cut short by a kill is ignored."""
  if not os.path.exists(path):
    return []
  entries = []
  with open(path) as f:
    lines = f.read().split('\n')
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      if number == len(lines):  # a partial last line: the write never finished
        logging.warning('Ignoring a partial last line in %s.', path)
        continue
      raise ValueError(
        f'{path}: line {number} is not JSON. Found {line[:80]!r}.'
      ) from None
    for key in ('release', 'round', 'clients', 'record'):
      if key not in entry:
        raise ValueError(
          f'{path}: line {number} must have {key!r}. Found keys '
          f'{sorted(entry)}.'
        )
    entries.append(entry)
  return entries


def _record_text(record: accounting.PrivacyRecord) -> str:
  if record.mechanism == accounting.GAUSSIAN:
    return f'DpEvent {record.dp_event}'
  if math.isinf(record.epsilon):
    return 'no DP guarantee (ε = ∞)'
  return f'(ε = {record.epsilon:g}, δ = {record.delta:g}) per round'


def _count_text(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  return f'{value:,.0f}'


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
  return {k: (v if math.isfinite(v) else None) for k, v in values.items()}


def write_learning_curves(
  rows: list[dict[str, str]], path: str, delta: float
) -> str:
  """PNG: validation Dice per region and mean, and ε (worst institution),
  against rounds. Written atomically."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  def series(key):
    xs, ys = [], []
    for row in rows:
      value = row.get(key, '')
      if value not in ('', 'nan', 'inf'):
        xs.append(int(row['round']))
        ys.append(float(value))
    return xs, ys

  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
  for key, label in (
    ('val_dice_mean', 'mean'),
    ('val_dice_tc', 'TC'),
    ('val_dice_wt', 'WT'),
    ('val_dice_et', 'ET'),
  ):
    xs, ys = series(key)
    top.plot(
      xs, ys, marker='o', label=label, linewidth=2 if label == 'mean' else 1
    )
  top.set_ylabel('validation Dice')
  top.set_ylim(0, 1)
  top.legend(loc='lower right')
  top.grid(alpha=0.3)
  xs, ys = series('epsilon_worst')
  if ys:
    bottom.plot(xs, ys, color='tab:red')
    bottom.set_ylabel(f'ε at δ={delta:g}\n(worst institution)')
  else:
    bottom.text(
      0.5,
      0.5,
      'no DP guarantee (ε = ∞)',
      ha='center',
      transform=bottom.transAxes,
    )
  bottom.set_xlabel('round')
  bottom.grid(alpha=0.3)
  fig.tight_layout()
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  temporary = f'{path}.tmp-{os.getpid()}.png'
  try:
    fig.savefig(temporary, dpi=100)
    os.replace(temporary, path)
  finally:
    plt.close(fig)
    if os.path.exists(temporary):
      os.remove(temporary)
  return path
