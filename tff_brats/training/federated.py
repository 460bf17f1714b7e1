"""Federated training with privacy: the product's main job.

`train_federated(config, run_dir)` runs weighted FedAvg
(`tff_brats.learning.fed_avg`) over the institutions of a prepared folder,
each client's update privatised by the configured mechanism
(`tff_brats.mechanisms`) before it is aggregated, on a TFF runtime the
trainer owns (`tff_brats.runtime.local`: started here, stopped on return,
error, Ctrl-C or SIGTERM). Clients train inside that runtime's C++ worker
(CPU only) or, with the in-process runtime, in this process over the GPUs
(`tff_brats.learning.in_process`; `runtime.devices` chooses).

The loop itself, `FederatedLoop`, takes the learning process and the
context it runs in from outside: anything with `initialize`, `next(state,
client_inputs)`, `get_model_weights` and `set_model_weights` (a
`tff.learning.templates.LearningProcess`, or a fast stand-in in tests), so
the budget stop, the privacy journal, resume, client sampling and
best-model keeping do not depend on how rounds are executed.

A run folder (`<root_output_dir>/<experiment_name>/`) holds

    hparams.json            the arguments of the run (with the mechanism)
    metrics.csv             one row per round: clients, training loss and
                            Dice on crops, values released, ε spent (worst
                            institution), seconds; on evaluated rounds
                            validation Dice and HD95 per region
    tensorboard/            the same scalars, plus overlay images
    privacy_ledger.json     per institution, every release and its guarantee
    privacy_ledger.txt      the ledger as a per-institution table (ε summed
                            and tight at δ) with what it does not cover
    privacy_journal.jsonl   write-ahead log of every round started
                            (`privacy_journal`)
    checkpoints/            `tff.program.FileProgramStateManager` states:
                            learning state, ledger, sampling, best model
    best_model/             the global model of the best evaluated round
    exported_model/         best_model as a SavedModel (serving signature)
    exported_model.keras    best_model as a Keras-native file
    final_model/            the global model after the last round
    learning_curves.png     mean validation Dice and ε against rounds
    summary.json            best round and its scores, ε per institution
    logs/                   the TFF worker's log

Privacy accounting: every round is journalled before it runs (see
`privacy_journal`); the ledger's rounds are release numbers, so an
interrupted round's releases are counted once and a checkpointed round never
twice. In a run that is never interrupted release r is round r + 1.

`target_epsilon`: before each round the ledger answers whether any selected
institution would pass the target (tight ε at `delta`); if so the run stops
before that round, saying which institution and what it would spend.

Resuming (`resume=True`) continues from the last checkpoint: the learning
state, ledger, release counter, sampling seed and best model are restored,
and with integer seeds the continued run is the one that would have
happened without the stop (client sampling and data keys are functions of
(seed, round); explicit `noise_seed` makes the privacy noise a function of
(seed, aggregator round, update)).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
from collections.abc import Mapping
import contextlib
import glob
import json
import math
import os
import shutil
import sys
import time
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tqdm

from tff_brats.data import manifest as manifest_lib
from tff_brats.evaluation import evaluate
from tff_brats.evaluation import learning_curves
from tff_brats.inference import export
from tff_brats.inference import model_sources
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.learning import client_training
from tff_brats.learning import fed_avg
from tff_brats.learning import in_process
from tff_brats.mechanisms import base as mechanisms_base
from tff_brats.models import model_io
from tff_brats.models import training_metadata
from tff_brats.privacy import accounting
from tff_brats.runtime import devices
from tff_brats.runtime import local
from tff_brats.runtime import sites as sites_lib
from tff_brats.training import federated_config
from tff_brats.training import privacy_journal
from tff_brats.training import run_outputs
from tff_brats.utils import atomic


class RunStorageError(RuntimeError):
  """A file of the run folder could not be written (disk full, read-only)."""


class DataVanishedError(ValueError):
  """A shard of the prepared data is gone in the middle of a run."""


CHECKPOINT_PREFIX = 'program_state_'
LEDGER_JSON = 'privacy_ledger.json'
KERAS_EXPORT = 'exported_model.keras'
LEDGER_TABLE = 'privacy_ledger.txt'
JOURNAL_NAME = privacy_journal.JOURNAL_NAME
FederatedConfig = federated_config.FederatedConfig
# Printed with every ε of a run whose clients send their training
# statistics (`report_training_statistics`, simulations only).
TRAINING_STATISTICS_CAVEAT = (
  'Not covered by this ε: the training statistics every client sent with '
  'its update (report_training_statistics: loss sum, Dice voxel counts on '
  'its training crops, non-finite flag) are not privatised.'
)


def sample_clients(
  client_ids: list[str],
  clients_per_round: int | None,
  seed: int,
  round_num: int,
) -> list[str]:
  """The round's institutions, in the order of `client_ids`.

  All of them, or `tff.simulation.build_uniform_sampling_fn`'s sample
  without replacement, a function of (seed, round) alone (so a resumed run
  samples what it would have).
  """
  if clients_per_round is None or clients_per_round >= len(client_ids):
    return list(client_ids)
  sample_fn = tff.simulation.build_uniform_sampling_fn(
    list(range(len(client_ids))), replace=False, random_seed=int(seed)
  )
  picked = sample_fn(int(round_num), int(clients_per_round))
  return [client_ids[i] for i in sorted(picked)]


def build_learning_process(
  config: FederatedConfig, model_aggregator, runtime: str = 'worker'
):
  """The run's learning process (tens of seconds of tracing).

  Args:
    config: The hyper-parameters.
    model_aggregator: `config.model_aggregator(clients_per_round)`.
    runtime: Where clients train: 'worker' (inside TFF's C++ worker: a
      `tff.learning.templates.LearningProcess`) or 'in_process' (here, on
      the training devices: `in_process.InProcessLearningProcess`, same
      state and metric types).
  """
  kwargs = dict(
    server_optimizer=config.server_optimizer,
    server_learning_rate=config.server_learning_rate,
  )
  if runtime == 'worker':
    return fed_avg.build_fed_avg_process(
      config.client_config(), model_aggregator, **kwargs
    )
  if runtime == 'in_process':
    return in_process.InProcessLearningProcess(
      config.client_config(), model_aggregator, **kwargs
    )
  raise ValueError(
    f"runtime must be 'worker' or 'in_process'. Found {runtime!r}."
  )


def train_federated(
  config: FederatedConfig,
  run_dir: str,
  *,
  resume: bool = False,
  progress: bool = True,
  worker_isolation: str = 'namespace',
  runtime: str = 'auto',
  sites: Mapping[str, str] | None = None,
  tls: sites_lib.TlsOptions | None = None,
  allow_plaintext_sites: bool = False,
  site_timeout: float = sites_lib.DEFAULT_SITE_TIMEOUT,
  site_connect_timeout: float = sites_lib.DEFAULT_CONNECT_TIMEOUT,
) -> dict[str, Any]:
  """Runs federated training; TFF runs on a local worker the run owns.

  Args:
    config: The hyper-parameters.
    run_dir: The run folder (created; must be new unless `resume`).
    resume: Continue the run in `run_dir` from its last checkpoint.
    progress: Show progress bars.
    worker_isolation: Where the worker listens (`runtime.local.LocalRuntime`'s
      `isolation`): 'namespace' (default) or 'none'.
    runtime: Where clients train (`runtime.devices.RUNTIMES`): 'worker'
      (TFF's C++ worker, CPU), 'in_process' (this process, over the GPUs,
      else the CPU) or 'auto' (in_process when a GPU is visible). The
      aggregation, privacy included, runs in TFF either way, and a run may
      resume on the other runtime.
    sites: Site name -> address ('host:port', or 'unix:path' on this host)
      of the sites that hold the institutions' data
      (`experiments/run_site.py`; `runtime.sites`). Each institution's
      clients then train on its site (runtime must be 'worker' or 'auto');
      the coordinator keeps the validation cases of `config.data_dir`.
    tls: The study CA and the coordinator's certificate and key for the
      sites (mutual TLS). Without it, only sites on loopback are allowed.
    allow_plaintext_sites: Allow plaintext to sites on other hosts (see
      `runtime.tls.PLAINTEXT_RISK`).
    site_timeout: Seconds a site may take for its part of a round.
    site_connect_timeout: Seconds a site may take to answer at the start.

  Returns:
    The content of summary.json (see the module docstring).

  Raises:
    ValueError: Bad arguments, an existing run folder without `resume`, or
      a resumed run with other hyper-parameters.
    sites_lib.SiteError: A site is unreachable, misconfigured, or failed or
      missed its deadline during a round (the message names it).
  """
  if sites:
    if runtime not in ('auto', 'worker'):
      raise ValueError(
        f"runtime must be 'worker' or 'auto' with sites (the clients train "
        f'on their sites). Found {runtime!r}.'
      )
    runtime = 'worker'
    study = sites_lib.Sites(
      sites,
      tls=tls,
      allow_plaintext=allow_plaintext_sites,
      connect_timeout=site_connect_timeout,
      site_timeout=site_timeout,
    )
    study.open()
  else:
    runtime = devices.resolve_runtime(runtime)
    study = None
  try:
    loop = FederatedLoop(config, run_dir, clients=study)
    # The mechanism checks its options (e.g. a noise seed it cannot honour)
    # when it builds its aggregator: before anything is written.
    aggregator = config.model_aggregator(loop.clients_per_round)
    loop.prepare_run_dir(resume)
    if runtime == 'in_process':
      devices.configure_gpus()  # before anything runs on a GPU
    started = time.monotonic()
    process = build_learning_process(config, aggregator, runtime)
    if study is not None:
      process = sites_lib.SitesLearningProcess(process, study)
      where = 'on their sites (' + ', '.join(study.connections) + ')'
    elif runtime == 'worker':
      where = "in TFF's C++ worker (CPU)"
    else:
      where = f'in this process on {", ".join(process.pool.devices)}'
    logging.info(
      'Built the learning process in %.1f s; clients train %s.',
      time.monotonic() - started,
      where,
    )
    context = local.LocalRuntime(
      default_num_clients=loop.clients_per_round,
      log_dir=os.path.join(run_dir, 'logs'),
      isolation=worker_isolation,
    )
    return loop.run(process, runtime=context, resume=resume, progress=progress)
  finally:
    if study is not None:
      study.close()


class FederatedLoop:
  """The rounds of one run, on a learning process given from outside.

  Example (what `train_federated` does):

    loop = FederatedLoop(config, run_dir)
    loop.prepare_run_dir(resume=False)
    summary = loop.run(process, runtime=local.LocalRuntime(...))
  """

  def __init__(self, config: FederatedConfig, run_dir: str, clients=None):
    """Checks the prepared data against the config (nothing is written).

    Args:
      config: The hyper-parameters.
      run_dir: The run folder.
      clients: Where the institutions' data is: anything with
        `institutions` (ids) and `shard_paths(id)`, e.g. the connected
        `runtime.sites.Sites` (paths on each site). Default: the
        institutions of `config.data_dir`, read here. The validation cases
        are always those of `config.data_dir`.

    Raises:
      ValueError: No clients, too many clients per round, no validation
        cases in `config.data_dir`, or an `initial_model` of another
        architecture.
      FileNotFoundError: `initial_model` is missing.
    """
    self.config = config
    self.run_dir = run_dir
    self.prepared = manifest_lib.load(config.data_dir)
    root = self.prepared.root
    self.on_sites = clients is not None
    if clients is None:
      self.client_ids = list(self.prepared.client_ids)
      self._shard_paths = self.prepared.shard_paths
      where = f'in {root!r}'
    else:
      self.client_ids = list(clients.institutions)
      self._shard_paths = clients.shard_paths
      where = 'on the sites'
      if config.eval_per_institution:
        raise ValueError(
          'eval_per_institution must be off when institutions train on '
          'sites: their cases stay there. Found it on.'
        )
    if not self.client_ids:
      raise ValueError(f'data_dir must have clients. Found none {where}.')
    if config.clients_per_round is not None and config.clients_per_round > len(
      self.client_ids
    ):
      raise ValueError(
        f'clients_per_round must be at most the {len(self.client_ids)} '
        f'institutions {where}. Found {config.clients_per_round}.'
      )
    self.validation = list(self.prepared.validation)[: config.max_eval_cases]
    if not self.validation:
      raise ValueError(
        f'data_dir must have validation cases to select the best model. '
        f'Found none in {root!r}; prepare it with --validation_fraction or '
        '--validation_cases.'
      )
    if config.initial_model is not None:
      model_sources.check_architecture(
        config.initial_model, config.model_config
      )
    self.clients_per_round = config.clients_per_round or len(self.client_ids)
    self.record = config.round_record()
    self.journal = privacy_journal.PrivacyJournal(
      os.path.join(run_dir, JOURNAL_NAME)
    )
    self.stopped = None
    self.last_eval = None
    self._prepared = False

  def prepare_run_dir(self, resume: bool) -> None:
    """Creates the run folder (or checks a resumed one) with hparams.json."""
    with self._writing('hparams.json'):
      run_outputs.prepare_run_dir(
        self.run_dir,
        self.config.to_json(),
        resume=resume,
        ignore=federated_config.RESUMABLE_CHANGES,
      )
    self._prepared = True

  @contextlib.contextmanager
  def _writing(self, what: str):
    """Turns a failed write into a `RunStorageError` that says what to do.

    A full disk, a read-only or vanished run folder surface as `OSError`
    from Python's own writes and as `tf.errors.OpError` from TensorFlow's
    (checkpoints, SavedModels, TensorBoard).
    """
    try:
      yield
    except (OSError, tf.errors.OpError) as e:
      raise RunStorageError(self._storage_message(what, e)) from e

  def _storage_message(self, what: str, error: Exception) -> str:
    if isinstance(error, OSError):
      detail = f'{error.strerror or error} ({error.filename or "?"})'
    else:
      detail = str(error.message).strip().splitlines()[-1]
    checkpoints = os.path.join(self.run_dir, 'checkpoints')
    try:
      versions = sorted(
        int(name[len(CHECKPOINT_PREFIX) :])
        for name in os.listdir(checkpoints)
        if name[len(CHECKPOINT_PREFIX) :].isdigit()
      )
    except OSError:
      versions = []
    last = (
      f'round {versions[-1]} ({os.path.join(checkpoints, CHECKPOINT_PREFIX)}'
      f'{versions[-1]})'
      if versions
      else 'none yet'
    )
    return (
      f'Could not write {what} in the run folder {self.run_dir}: {detail}. '
      f'Nothing written before is lost: the last complete checkpoint is '
      f'{last}, and the privacy journal counts every round that started. '
      'Free space or make the folder writable, then continue with --resume.'
    )

  def run(
    self,
    process: Any,
    *,
    runtime: contextlib.AbstractContextManager | None = None,
    resume: bool = False,
    progress: bool = True,
  ) -> dict[str, Any]:
    """Runs the remaining rounds, then writes the run's outputs.

    Args:
      process: The learning process (see the module docstring).
      runtime: A context every call of `process` runs inside (the TFF
        runtime); entered once for all rounds and left before the outputs
        are written. None: no context.
      resume: Continue from the run folder's last checkpoint.
      progress: Show a progress bar.

    Returns:
      The content of summary.json.
    """
    if not self._prepared:
      self.prepare_run_dir(resume)
    self._progress = progress
    self._bar: tqdm.tqdm | None = None  # while the rounds run, with progress
    self.process = process
    self.metrics = run_outputs.MetricsRelease(self.run_dir, 'round')
    self.manager = tff.program.FileProgramStateManager(
      os.path.join(self.run_dir, 'checkpoints'),
      prefix=CHECKPOINT_PREFIX,
      keep_total=2,
    )
    with runtime if runtime is not None else contextlib.nullcontext():
      self._start(resume)
      self._rounds(progress)
    with self._writing('the final outputs (models, ledger, summary)'):
      return self._finish()

  # ---------------------------------------------------------------- setup

  def _start(self, resume: bool) -> None:
    config = self.config
    # After the process: Keras invalidates models built before others are
    # built inside a graph (TFF traces its computations in graphs).
    if config.seed is not None:
      tf.keras.utils.set_random_seed(config.seed)
    self.model = config.client_config().build_model()
    if config.initial_model is not None:
      model_sources.load_weights_into(self.model, config.initial_model)
      logging.info('Starting from the model in %s.', config.initial_model)
    self.predict_fn = predictors.from_keras_model(self.model)
    # What inference needs to match training, in every model folder.
    self.training = training_metadata.TrainingMetadata.for_prepared(
      self.prepared, config.crop_size
    )
    self.eval_options = options_lib.InferenceOptions(
      window=config.window, overlap=config.eval_overlap
    )
    state = self.process.initialize()
    self.state = self.process.set_model_weights(state, self._model_weights())
    self.round = 0
    self.next_release = 0
    self.ledger = accounting.PrivacyLedger(client_ids=self.client_ids)
    self.sampling_seed = (
      config.seed
      if config.seed is not None
      else int.from_bytes(os.urandom(4), 'little')
    )
    self.best_round, self.best_dice = 0, -1.0
    self.best_weights = [v.numpy() for v in self.model.trainable_variables]
    if resume:
      self._restore()
    with self._writing('the privacy journal (dropping a cut-off line)'):
      self.next_release = self.journal.replay(self.ledger, self.next_release)

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
    # Saves cut short by a kill: never loaded (their names are not final),
    # removed so they do not pile up. Checkpoints are staged by TFF as
    # `program_state_N_temp*`; models and files by `atomic` as
    # `<name>.tmp-*` and `.<stem>.tmp-*`.
    stale = glob.glob(
      os.path.join(self.run_dir, 'checkpoints', f'{CHECKPOINT_PREFIX}*_temp*')
    )
    stale += glob.glob(os.path.join(self.run_dir, '*.tmp-*'))
    stale += glob.glob(
      os.path.join(self.run_dir, '**', '.*.tmp-*'), recursive=True
    )
    for path in stale:
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(path)
    versions = asyncio.run(self.manager.get_versions())
    if not versions:
      logging.info('No checkpoint in %s: starting at round 0.', self.run_dir)
      return
    saved = asyncio.run(self.manager.load(versions[-1], self._program_state()))
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

  # ----------------------------------------------------------------- loop

  def _rounds(self, progress: bool) -> None:
    config = self.config
    bar = tqdm.tqdm(
      total=config.total_rounds,
      initial=self.round,
      desc='rounds',
      unit='round',
      disable=not progress,
    )
    self._bar = bar if progress else None
    with bar:
      while self.round < config.total_rounds:
        round_num = self.round + 1
        clients = self._clients(round_num)
        over = self._over_budget(clients)
        if over:
          self._stop_at_budget(round_num, over)
          break
        self._run_round(round_num, clients)
        bar.update()
    self._bar = None

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

  def _stop_at_budget(self, round_num: int, over: list[str]) -> None:
    config = self.config
    spent = {c: self.ledger.epsilon(c, delta=config.delta) for c in over}
    details = ', '.join(f'{c} (ε now {spent[c]:.4g})' for c in over)
    self.stopped = (
      f'Stopped before round {round_num}: it would take {details} past '
      f'target_epsilon={config.target_epsilon} at delta={config.delta} '
      f'(each round spends {config.mechanism.name} '
      f'{config.guarantee_text()}).'
    )
    logging.warning('%s', self.stopped)

  def _run_round(self, round_num: int, clients: list[str]) -> dict[str, Any]:
    config = self.config
    started = time.monotonic()
    release = self.next_release
    if not self.on_sites:
      self._check_shards(
        {f'institution {c!r}': self._shard_paths(c) for c in clients},
        f'before round {round_num}',
      )
    with self._writing('the privacy journal (before the round started)'):
      self.journal.append(release, round_num, clients, self.record)
    inputs = [
      collections.OrderedDict(
        shard_paths=np.array(self._shard_paths(c), dtype=object),
        data_key=fed_avg.client_data_key(
          config.seed, round_num, self.client_ids.index(c)
        ),
      )
      for c in clients
    ]
    if getattr(self.process, 'takes_client_ids', False):  # routes by site
      output = self.process.next(self.state, inputs, client_ids=clients)
    else:
      output = self.process.next(self.state, inputs)
    self.state = output.state
    self.ledger.record_round(release, clients, self.record)
    self.next_release = release + 1
    self.round = round_num

    metrics = output.metrics
    train = metrics['client_work']['train']
    worst = self.ledger.worst_case(config.delta)
    worst_summed = self.ledger.worst_case(config.delta, 'sum')
    row = collections.OrderedDict(
      round=round_num,
      release=release,
      clients=len(clients),
      client_ids=' '.join(clients),
      steps=int(train['steps']),
      **_training_columns(train),
      **_privacy_columns(metrics['aggregator'], config.diagnostics),
      epsilon_worst=worst[1] if worst else 0.0,
      epsilon_worst_summed=worst_summed[1] if worst_summed else 0.0,
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
    with self._writing(f'the metrics of round {round_num}'):
      self.metrics.release(row, evaluated)
    if round_num % config.rounds_per_checkpoint == 0 or last:
      with self._writing(f'the checkpoint of round {round_num}'):
        asyncio.run(self.manager.save(self._program_state(), round_num))
    val = row['val_dice_mean']
    loss = row.get('train_loss')
    epsilon = accounting.format_epsilon(row['epsilon_worst'])
    report_line(
      f'round {round_num}/{config.total_rounds}: {len(clients)} clients, '
      f'loss {"-" if loss is None else f"{loss:.4f}"}, released '
      f'{_count_text(row.get("released_mean"))}, ε per '
      f'{config.mechanism.unit} {epsilon}'
      f' (worst: {row["epsilon_worst_client"] or "-"}), validation mean Dice '
      f'{"-" if val == "" else f"{val:.4f}"}, {row["seconds"]:.1f} s',
      self._progress,
      # Above the bar: rounds with a validation; the others on the bar.
      shown=val != '',
    )
    if self._bar is not None:
      postfix = {'ε': epsilon}
      if loss is not None:
        postfix['loss'] = f'{loss:.4f}'
      self._bar.set_postfix(postfix)
    return row

  def _check_shards(self, paths: Mapping[str, list[str]], when: str) -> None:
    """Stops before a round or an evaluation whose data are gone.

    Args:
      paths: Whose shards ("institution 'a'") -> their paths.
      when: For the message, e.g. 'before round 3'.
    """
    for whose, shards in paths.items():
      for path in shards:
        if not os.path.isfile(path):
          raise DataVanishedError(
            f'data_dir {self.config.data_dir!r}: shard {path!r} of {whose} '
            f'must exist. Found it gone {when} (was the data folder moved, '
            'deleted or unmounted?). Rounds that completed are kept, and a '
            'round stopped by this released nothing; bring the data back '
            'and continue with --resume.'
          )

  def _set_model(self, trainable) -> None:
    for variable, value in zip(
      self.model.trainable_variables, trainable, strict=True
    ):
      variable.assign(value)

  def _evaluate(self, round_num: int, row: dict[str, Any]):
    config = self.config
    self._check_shards(
      {
        'the validation cases': self.prepared.shard_paths(
          manifest_lib.VALIDATION
        )
      },
      f'at the evaluation after round {round_num}',
    )
    result = self.last_eval = evaluate.evaluate_prepared(
      self.predict_fn,
      self.prepared,
      self.validation,
      self.eval_options,
      num_examples=config.num_overlay_cases,
    )
    row.update(run_outputs.validation_columns(result))
    if config.eval_per_institution:
      for client_id in self.client_ids:
        cases = list(self.prepared.clients[client_id])[
          : config.max_institution_eval_cases
        ]
        own = evaluate.evaluate_prepared(
          self.predict_fn, self.prepared, cases, self.eval_options
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
    try:
      with self._writing('best_model'):
        model_io.save_model(
          self.model,
          os.path.join(self.run_dir, 'best_model'),
          overwrite=True,
          training=self.training,
        )
    finally:
      self._set_model(current)

  # --------------------------------------------------------------- finish

  def _finish(self) -> dict[str, Any]:
    config, run_dir = self.config, self.run_dir
    mechanism = config.mechanism
    # self.model holds the latest global model (set after every round and
    # on restore); the runtime is closed by now.
    model_io.save_model(
      self.model,
      os.path.join(run_dir, 'final_model'),
      overwrite=True,
      training=self.training,
    )
    atomic.write_text(
      os.path.join(run_dir, LEDGER_JSON), self.ledger.to_json() + '\n'
    )
    caveats = list(config.caveats)
    if config.report_training_statistics:
      caveats.append(TRAINING_STATISTICS_CAVEAT)
    unit = mechanisms_base.unit_text(mechanism.unit)
    table = self.ledger.table(config.delta, notes=caveats, unit=unit)
    atomic.write_text(os.path.join(run_dir, LEDGER_TABLE), table + '\n')
    exported = exported_keras = None
    if self.best_round > 0:
      exported = export.export_model_dir(
        os.path.join(run_dir, 'best_model'),
        os.path.join(run_dir, 'exported_model'),
        overwrite=True,
      )
      exported_keras = export.export_keras_file(
        os.path.join(run_dir, 'best_model'),
        os.path.join(run_dir, KERAS_EXPORT),
        overwrite=True,
      )
    rows = self.metrics.rows()
    learning_curves.write_learning_curves(
      rows,
      os.path.join(run_dir, 'learning_curves.png'),
      config.delta,
      target_epsilon=config.target_epsilon,
      unit=mechanism.unit,
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
        'mechanism': mechanism.name,
        'unit': mechanism.unit,
        'per_round': config.guarantee_text(),
        'delta': config.delta,
        'epsilon_tight': _finite_or_none(epsilons['pld']),
        'epsilon_summed': _finite_or_none(epsilons['sum']),
        'rounds_per_institution': {
          c: self.ledger.num_rounds(c) for c in self.client_ids
        },
        'caveats': caveats,
      },
      'seconds_last_round': float(last['seconds']) if last else None,
      'best_model': os.path.join(run_dir, 'best_model'),
      'exported_model': exported,
      'exported_keras': exported_keras,
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


def report_line(line: str, progress: bool, *, shown: bool = True) -> None:
  """One line per round or epoch: above the progress bar when there is one
  and the line is `shown` (the binaries' default console, which logs only
  warnings), else to the INFO log (`--verbosity=0` shows it)."""
  if progress and shown:
    tqdm.tqdm.write(line, file=sys.stderr)
  else:
    logging.info('%s', line)


def _training_columns(train) -> dict[str, Any]:
  """Training loss and Dice on the clients' crops, if they sent them."""
  if _get(train, 'loss_sum') is None:
    return {}
  steps = float(train['steps'])
  dice = client_training.pooled_dice(
    train['dice_intersection'], train['dice_predicted'], train['dice_target']
  )
  return {
    'train_loss': float(train['loss_sum']) / steps if steps else math.nan,
    'train_dice_tc': dice[0],
    'train_dice_wt': dice[1],
    'train_dice_et': dice[2],
    'non_finite_updates': int(train['non_finite']),
  }


def _privacy_columns(aggregator_metrics, diagnostics: bool) -> dict[str, Any]:
  """Released counts, if the aggregator measures them (client-side ones)."""
  privatization = _get(aggregator_metrics, 'privatization')
  if privatization is None:
    return {'released_mean': math.nan, 'epsilon_per_client': ''}
  columns = {
    'released_mean': float(privatization['released_mean']),
    'released_min': float(privatization['released_min']),
    'released_max': float(privatization['released_max']),
    'epsilon_per_client': float(privatization['epsilon_per_client']),
  }
  if diagnostics:
    columns['clipped_fraction_mean'] = float(
      privatization['clipped_fraction_mean']
    )
    columns['noisy_threshold_mean'] = float(
      privatization['noisy_threshold_mean']
    )
  return columns


def _get(structure, name: str):
  """`structure[name]` (a mapping) or None."""
  if isinstance(structure, collections.abc.Mapping):
    return structure.get(name)
  return None


def _count_text(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  return f'{value:,.0f}'


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
  return {k: (v if math.isfinite(v) else None) for k, v in values.items()}
