"""The pooled (centralised) baseline: every client's cases in one place.

This is the reference every federated and private run is compared against:
the same network, loss, optimiser, input pipeline and evaluation, with all
training cases of a prepared folder pooled. A run folder
(`<root_output_dir>/<experiment_name>/`) holds

    hparams.json          the arguments of the run
    metrics.csv           one row per epoch: training loss and Dice on
                          crops, and on evaluated epochs validation Dice and
                          HD95 per region (sliding window, whole cases)
    tensorboard/          the same scalars, plus overlay images of a few
                          validation cases (FLAIR | truth | prediction)
    checkpoints/          model, optimiser, epoch and best score, every epoch
    best_model/           the model with the best mean validation Dice
                          (`tff_brats.models.model_io` folder, recording
                          the training crop and the prepared data's crop
                          margin, which inference uses as its defaults)
    final_model/          the model after the last epoch (the same)
    exported_model.keras  best_model as a Keras-native file
                          (`tf.keras.models.load_model` after importing
                          tff_brats)
    summary.json          best epoch and its scores, final scores

`resume=True` continues from the last checkpoint with the same
hyper-parameters (the number of epochs may be raised); the CSV rows from
the restored epoch on are replaced as the epochs run again
(`run_outputs.MetricsRelease`), and with an integer seed the continued run is the run
that would have happened without the interruption (each epoch's crops are a
function of (seed, epoch)).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf
import tqdm

from tff_brats.data import manifest as manifest_lib
from tff_brats.data import pipeline
from tff_brats.evaluation import evaluate
from tff_brats.inference import export
from tff_brats.inference import model_sources
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.learning import client_training
from tff_brats.models import metrics as metrics_lib
from tff_brats.models import model_io
from tff_brats.models import precision as precision_lib
from tff_brats.models import segresnet
from tff_brats.models import training_metadata
from tff_brats.training import run_outputs
from tff_brats.utils import atomic
from tff_brats.utils import checks

KERAS_EXPORT = 'exported_model.keras'


@dataclasses.dataclass(frozen=True)
class CentralizedConfig:
  """Hyper-parameters of a centralised run (saved as hparams.json).

  Attributes:
    data_dir: A folder written by `experiments/prepare_data.py`.
    epochs: Passes over the pooled training cases.
    learning_rate: Adam's learning rate (1e-4 in the reference recipe).
    crop_size: Training crop (each side divisible by 8).
    batch_size: Crops per step.
    init_filters: SegResNet's initial filters (16 in the reference).
    blocks_down, blocks_up: SegResNet's residual blocks per encoder level
      and decoder stage (MONAI's (1, 2, 2, 4) and (1, 1, 1) by default).
    loss: 'dice' (soft Dice) or 'dice_bce' (soft Dice + cross-entropy).
    precision: 'float32', 'mixed_float16' (GPUs) or 'mixed_bfloat16'.
    tumour_crop_probability: Probability that a crop is centred on tumour.
    crops_per_case: Crops taken from a case each time it is read.
    epochs_per_eval: Validate every this many epochs (and after the last).
    eval_window: Sliding-window size for validation (default: crop_size).
    eval_overlap: Sliding-window overlap.
    max_eval_cases: Validate on at most this many validation cases (None:
      all of them).
    num_overlay_cases: Validation cases drawn in TensorBoard.
    initial_model: A saved model to start from instead of random weights
      (same architecture): a model folder, a `.keras` file or an exported
      SavedModel folder (`inference.model_sources`).
    seed: Seed of crops, augmentation and weights; None draws fresh ones.
  """

  data_dir: str
  epochs: int = 50
  learning_rate: float = 1e-4
  crop_size: tuple[int, int, int] = (64, 64, 64)
  batch_size: int = 1
  init_filters: int = 16
  blocks_down: tuple[int, ...] = segresnet.DEFAULT_BLOCKS_DOWN
  blocks_up: tuple[int, ...] = segresnet.DEFAULT_BLOCKS_UP
  loss: str = 'dice_bce'
  precision: str = 'float32'
  tumour_crop_probability: float = pipeline.DEFAULT_TUMOUR_CROP_PROBABILITY
  crops_per_case: int = 1
  epochs_per_eval: int = 1
  eval_window: tuple[int, int, int] | None = None
  eval_overlap: float = 0.5
  max_eval_cases: int | None = None
  num_overlay_cases: int = 2
  initial_model: str | None = None
  seed: int | None = 0

  def __post_init__(self):
    checks.check_positive_int('epochs', self.epochs)
    checks.check_positive_int('batch_size', self.batch_size)
    checks.check_positive_int('init_filters', self.init_filters)
    blocks_down, blocks_up = segresnet.check_blocks(
      self.blocks_down, self.blocks_up
    )
    object.__setattr__(self, 'blocks_down', blocks_down)
    object.__setattr__(self, 'blocks_up', blocks_up)
    checks.check_positive_int('epochs_per_eval', self.epochs_per_eval)
    checks.check_positive_int('crops_per_case', self.crops_per_case)
    checks.check_non_negative_int('num_overlay_cases', self.num_overlay_cases)
    if self.max_eval_cases is not None:
      checks.check_positive_int('max_eval_cases', self.max_eval_cases)
    checks.check_positive_number('learning_rate', self.learning_rate)
    client_training.make_loss(self.loss)  # checks the name
    for name in ('crop_size', 'eval_window'):
      size = getattr(self, name)
      if size is not None and (
        len(size) != 3
        or not all(checks.is_int(s) and s % 8 == 0 and s > 0 for s in size)
      ):
        raise ValueError(
          f'{name} must be 3 positive multiples of 8. Found {size!r}.'
        )

  @property
  def window(self) -> tuple[int, int, int]:
    return tuple(self.eval_window or self.crop_size)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def train_centralized(
  config: CentralizedConfig,
  run_dir: str,
  *,
  resume: bool = False,
  progress: bool = True,
) -> dict[str, Any]:
  """Trains the pooled baseline; see the module docstring for the outputs.

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
  validation = list(prepared.validation)[: config.max_eval_cases]
  if not validation:
    raise ValueError(
      f'data_dir must have validation cases to select the best model. '
      f'Found none in {prepared.root!r}; prepare it with '
      '--validation_fraction or --validation_cases.'
    )
  if config.initial_model is not None:  # before anything is written
    model_sources.check_architecture(
      config.initial_model,
      {
        'init_filters': config.init_filters,
        'blocks_down': config.blocks_down,
        'blocks_up': config.blocks_up,
      },
    )
  run_outputs.prepare_run_dir(
    run_dir, config.to_json(), resume=resume, ignore=('epochs',)
  )
  if config.seed is not None:
    tf.keras.utils.set_random_seed(config.seed)
  with precision_lib.precision_scope(config.precision):
    model = segresnet.SegResNet(
      init_filters=config.init_filters,
      blocks_down=config.blocks_down,
      blocks_up=config.blocks_up,
    )
    model.build((None, *config.crop_size, 4))
  if config.initial_model is not None:
    # A resumed run's checkpoint overrides these weights below.
    model_sources.load_weights_into(model, config.initial_model)
    logging.info('Starting from the model in %s.', config.initial_model)
  optimizer = precision_lib.wrap_optimizer(
    tf.keras.optimizers.Adam(config.learning_rate), config.precision
  )
  loss_fn = client_training.make_loss(config.loss)
  train_metrics = metrics_lib.segmentation_metrics()
  epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name='epoch')
  best_dice = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
  best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
  checkpoint = tf.train.Checkpoint(
    model=model,
    optimizer=optimizer,
    epoch=epoch,
    best_dice=best_dice,
    best_epoch=best_epoch,
  )
  manager = tf.train.CheckpointManager(
    checkpoint, os.path.join(run_dir, 'checkpoints'), max_to_keep=2
  )
  metrics = run_outputs.MetricsRelease(run_dir, 'epoch')
  if resume and manager.latest_checkpoint:
    checkpoint.restore(
      manager.latest_checkpoint
    ).assert_existing_objects_matched()
    logging.info('Resumed %s at epoch %d.', run_dir, int(epoch.numpy()))

  train_step = _make_train_step(model, optimizer, loss_fn, train_metrics)
  training = training_metadata.TrainingMetadata.for_prepared(
    prepared, config.crop_size
  )
  predict_fn = predictors.from_keras_model(model)
  eval_options = options_lib.InferenceOptions(
    window=config.window, overlap=config.eval_overlap
  )
  last_eval = None
  while int(epoch.numpy()) < config.epochs:
    current = int(epoch.numpy()) + 1
    started = time.monotonic()
    train_loss = _train_epoch(
      train_step, prepared, config, current, train_metrics, progress
    )
    row = {
      'epoch': current,
      'train_loss': train_loss,
      **{f'train_{m.name}': float(m.result()) for m in train_metrics},
    }
    evaluated = None
    if current % config.epochs_per_eval == 0 or current == config.epochs:
      evaluated = last_eval = evaluate.evaluate_prepared(
        predict_fn,
        prepared,
        validation,
        eval_options,
        num_examples=config.num_overlay_cases,
        progress=progress,
      )
      row.update(run_outputs.validation_columns(last_eval))
      if last_eval.mean_dice > float(best_dice.numpy()):
        best_dice.assign(last_eval.mean_dice)
        best_epoch.assign(current)
        model_io.save_model(
          model,
          os.path.join(run_dir, 'best_model'),
          overwrite=True,
          training=training,
        )
    else:
      row.update(run_outputs.validation_columns(None))
    row['seconds'] = round(time.monotonic() - started, 2)
    metrics.release(row, evaluated)
    epoch.assign(current)
    manager.save(checkpoint_number=current)
    val_dice = row['val_dice_mean']
    line = (
      f'epoch {current}/{config.epochs}: loss {train_loss:.4f}, validation '
      f'mean Dice {"-" if val_dice == "" else f"{val_dice:.4f}"}, '
      f'{row["seconds"]:.1f} s'
    )
    if progress:  # above the progress bars (the binary logs only warnings)
      tqdm.tqdm.write(line, file=sys.stderr)
    else:
      logging.info('%s', line)

  model_io.save_model(
    model,
    os.path.join(run_dir, 'final_model'),
    overwrite=True,
    training=training,
  )
  exported_keras = export.export_keras_file(
    os.path.join(run_dir, 'best_model'),
    os.path.join(run_dir, KERAS_EXPORT),
    overwrite=True,
  )
  summary = {
    'exported_keras': exported_keras,
    'best_epoch': int(best_epoch.numpy()),
    'best_val_dice_mean': float(best_dice.numpy()),
    'epochs': config.epochs,
    'validation_cases': len(validation),
    'final_validation': None if last_eval is None else last_eval.summary,
    'best_model': os.path.join(run_dir, 'best_model'),
    'final_model': os.path.join(run_dir, 'final_model'),
  }
  atomic.write_text(
    os.path.join(run_dir, 'summary.json'),
    json.dumps(summary, indent=1, sort_keys=True) + '\n',
  )
  return summary


def _make_train_step(model, optimizer, loss_fn, train_metrics):
  @tf.function
  def train_step(images, regions):
    with tf.GradientTape() as tape:
      probabilities = model(images, training=True)
      loss = loss_fn(regions, probabilities)
    gradients = precision_lib.scaled_gradients(
      optimizer, tape, loss, model.trainable_variables
    )
    optimizer.apply_gradients(
      zip(gradients, model.trainable_variables, strict=True)
    )
    for metric in train_metrics:
      metric.update_state(regions, probabilities)
    return loss

  return train_step


def _train_epoch(train_step, prepared, config, epoch, train_metrics, progress):
  for metric in train_metrics:
    metric.reset_state()
  seed = None if config.seed is None else _epoch_seed(config.seed, epoch)
  dataset = pipeline.make_centralized_dataset(
    prepared,
    crop_size=config.crop_size,
    batch_size=config.batch_size,
    tumour_crop_probability=config.tumour_crop_probability,
    crops_per_case=config.crops_per_case,
    seed=seed,
  )
  num_cases = sum(len(ids) for ids in prepared.clients.values())
  steps = num_cases * config.crops_per_case // config.batch_size
  losses_seen = []
  with tqdm.tqdm(
    total=steps,
    desc=f'epoch {epoch}/{config.epochs}',
    unit='step',
    disable=not progress,
  ) as bar:
    for images, regions in dataset:
      loss = float(train_step(images, regions))
      losses_seen.append(loss)
      bar.set_postfix(loss=f'{np.mean(losses_seen):.4f}')
      bar.update()
  return float(np.mean(losses_seen)) if losses_seen else float('nan')


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
