"""End-to-end tests of the centralised baseline on a tiny prepared folder."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from tff_brats import mechanisms
from tff_brats.data import manifest as manifest_lib
from tff_brats.models import model_io
from tff_brats.models import training_metadata
from tff_brats.training import centralized
from tff_brats.training import federated_config

# Each test trains a small SegResNet for a few steps (~10-20 s each).
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  prepared = testing_utils.write_prepared_folder(
    str(root),
    {'a': [(16, 16, 16)] * 2, 'b': [(16, 18, 16)]},
    validation_shapes=[(16, 16, 16), (18, 16, 16)],
  )
  # As if prepared with prepare_data --crop_margin=1.
  manifest_lib.Manifest(
    **{**prepared.__dict__, 'request': {**prepared.request, 'crop_margin': 1}}
  ).save()
  return str(root)


def _config(data_dir, **overrides):
  kwargs = dict(
    data_dir=data_dir,
    epochs=2,
    crop_size=(16, 16, 16),
    init_filters=8,
    blocks_down=(1, 1),
    blocks_up=(1,),
    tumour_crop_probability=1.0,
    learning_rate=1e-3,
    seed=3,
    num_overlay_cases=1,
    loss='dice',  # soft Dice is in [0, 1]
  )
  kwargs.update(overrides)
  return centralized.CentralizedConfig(**kwargs)


def test_defaults_match_the_federated_trainer():
  ours = centralized.CentralizedConfig(data_dir='/data')
  theirs = federated_config.FederatedConfig(
    data_dir='/data', mechanism=mechanisms.NoPrivacy()
  )
  for name in ('loss', 'crop_size', 'batch_size', 'init_filters', 'precision'):
    assert getattr(ours, name) == getattr(theirs, name), name
  assert ours.loss == 'dice_bce'


@pytest.fixture(scope='module')
def two_epochs(data_dir, tmp_path_factory):
  """One uninterrupted 2-epoch run, shared by the tests that only read it."""
  run_dir = str(tmp_path_factory.mktemp('two_epochs') / 'run')
  summary = centralized.train_centralized(
    _config(data_dir), run_dir, progress=False
  )
  return run_dir, summary


def test_run_writes_every_output(two_epochs):
  run_dir, summary = two_epochs
  assert sorted(os.listdir(run_dir)) == [
    'best_model',
    'checkpoints',
    'exported_model.keras',
    'final_model',
    'hparams.json',
    'metrics.csv',
    'summary.json',
    'tensorboard',
  ]
  assert summary['exported_keras'] == os.path.join(
    run_dir, 'exported_model.keras'
  )
  np.testing.assert_array_equal(
    model_io.load_keras(summary['exported_keras']).get_weights()[0],
    model_io.load_model(os.path.join(run_dir, 'best_model')).get_weights()[0],
  )
  with open(os.path.join(run_dir, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [r['epoch'] for r in rows] == ['1', '2']
  for row in rows:
    assert 0.0 <= float(row['val_dice_mean']) <= 1.0
    assert 0.0 <= float(row['train_loss']) <= 1.0
    assert float(row['val_hd95_WT']) >= 0.0
  with open(os.path.join(run_dir, 'hparams.json')) as f:
    hparams = json.load(f)
  assert hparams['crop_size'] == [16, 16, 16]
  assert hparams['learning_rate'] == 1e-3
  assert summary['best_epoch'] in (1, 2)
  best = max(float(r['val_dice_mean']) for r in rows)
  assert summary['best_val_dice_mean'] == pytest.approx(best, abs=1e-6)
  assert summary['validation_cases'] == 2
  # The saved models load and predict, and record what inference must
  # match: the training crop and the prepared folder's crop margin.
  model = model_io.load_model(os.path.join(run_dir, 'best_model'))
  out = model(tf.zeros((1, 16, 16, 16, 4)))
  assert out.shape == (1, 16, 16, 16, 3)
  for name in ('best_model', 'final_model'):
    assert model_io.read_training_metadata(
      os.path.join(run_dir, name)
    ) == training_metadata.TrainingMetadata((16, 16, 16), crop_margin=1)
  # TensorBoard holds scalars and at least one overlay image.
  events = tf.io.gfile.glob(os.path.join(run_dir, 'tensorboard', 'events*'))
  assert events
  tags = set()
  for path in events:  # scalars and images come from two writers
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.add(value.tag)
  assert 'train_loss' in tags and 'val_dice_mean' in tags
  assert any(t.startswith('validation/') for t in tags)


def test_training_reduces_the_loss(data_dir, tmp_path):
  run_dir = str(tmp_path / 'run')
  centralized.train_centralized(
    _config(
      data_dir,
      epochs=5,
      epochs_per_eval=5,
      crops_per_case=4,
      learning_rate=1e-2,
    ),
    run_dir,
    progress=False,
  )
  with open(os.path.join(run_dir, 'metrics.csv')) as f:
    losses = [float(r['train_loss']) for r in csv.DictReader(f)]
  # 5 epochs x 12 tumour-centred crops at lr 1e-2 (seed 3): the soft Dice
  # loss falls from 0.972 to 0.891 (the first steps mostly push the
  # background probabilities down, so it starts slowly).
  assert losses == sorted(losses, reverse=True), losses
  assert losses[-1] < losses[0] - 0.04, losses


def test_resume_equals_an_uninterrupted_run(data_dir, two_epochs, tmp_path):
  straight = two_epochs[0]
  resumed = str(tmp_path / 'resumed')
  centralized.train_centralized(
    _config(data_dir, epochs=1), resumed, progress=False
  )
  centralized.train_centralized(
    _config(data_dir, epochs=2), resumed, resume=True, progress=False
  )
  a = model_io.load_model(os.path.join(straight, 'final_model'))
  b = model_io.load_model(os.path.join(resumed, 'final_model'))
  for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
    np.testing.assert_array_equal(wa, wb)
  with open(os.path.join(straight, 'metrics.csv')) as f:
    straight_rows = list(csv.DictReader(f))
  with open(os.path.join(resumed, 'metrics.csv')) as f:
    resumed_rows = list(csv.DictReader(f))
  assert [r['epoch'] for r in resumed_rows] == ['1', '2']
  for key in ('train_loss', 'val_dice_mean'):
    assert [r[key] for r in resumed_rows] == [r[key] for r in straight_rows]


def test_resume_with_other_hyper_parameters_is_refused(
  data_dir, two_epochs, tmp_path
):
  run_dir = str(tmp_path / 'run')
  shutil.copytree(two_epochs[0], run_dir)
  before = sorted(os.listdir(run_dir))
  with pytest.raises(ValueError, match=r'learning_rate: saved 0.001, now 0.01'):
    centralized.train_centralized(
      _config(data_dir, epochs=3, learning_rate=1e-2),
      run_dir,
      resume=True,
      progress=False,
    )
  assert sorted(os.listdir(run_dir)) == before


def test_existing_run_dir_needs_resume(data_dir, tmp_path):
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  (run_dir / 'x').write_text('')
  with pytest.raises(ValueError, match='run_dir must be new or empty'):
    centralized.train_centralized(_config(data_dir), str(run_dir))


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'epochs': 0}, 'epochs must be a positive integer. Found 0.'),
    (
      {'crop_size': (16, 16, 12)},
      r'crop_size must be 3 positive multiples of 8',
    ),
    ({'loss': 'focal'}, r"loss must be one of \('dice', 'dice_bce'\)"),
    (
      {'learning_rate': 0.0},
      'learning_rate must be a positive number. Found 0.0.',
    ),
  ],
)
def test_bad_config(data_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    _config(data_dir, **overrides)


def test_starts_from_an_initial_model(two_epochs, data_dir, tmp_path):
  # The first run's Keras export starts a new run. With a learning rate of
  # 1e-12 one epoch moves no weight by more than about 1e-11 (Adam's step
  # is at most the learning rate), so the new run's final model is the
  # export to float tolerance; from random weights it would not be.
  _, summary = two_epochs
  exported = summary['exported_keras']
  start = model_io.load_keras(exported)
  config = _config(
    data_dir, epochs=1, learning_rate=1e-12, initial_model=exported
  )
  new_summary = centralized.train_centralized(
    config, str(tmp_path / 'run'), progress=False
  )
  final = model_io.load_model(new_summary['final_model'])
  for a, b in zip(
    final.trainable_weights, start.trainable_weights, strict=True
  ):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
  # Another architecture is refused before anything is written.
  with pytest.raises(ValueError, match='field "config.init_filters" is 8'):
    centralized.train_centralized(
      _config(data_dir, init_filters=16, initial_model=exported),
      str(tmp_path / 'other'),
      progress=False,
    )
  assert not os.path.exists(tmp_path / 'other')
