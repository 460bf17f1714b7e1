"""Tests for tff_brats.training.run_outputs."""

import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.training import run_outputs


def test_hparams_round_trip_and_resume_check(tmp_path):
  run_dir = str(tmp_path)
  path = run_outputs.write_hparams(run_dir, {'lr': 0.1, 'crop': (8, 8, 8)})
  with open(path) as f:
    assert json.load(f) == {'lr': 0.1, 'crop': [8, 8, 8]}
  run_outputs.check_resumable(run_dir, {'lr': 0.1, 'crop': (8, 8, 8)})
  with pytest.raises(ValueError, match=r'lr: saved 0.1, now 0.2'):
    run_outputs.check_resumable(run_dir, {'lr': 0.2, 'crop': (8, 8, 8)})
  with pytest.raises(ValueError, match=r"extra: saved None, now 'x'"):
    run_outputs.check_resumable(
      run_dir, {'lr': 0.1, 'crop': (8, 8, 8), 'extra': 'x'}
    )
  run_outputs.check_resumable(
    run_dir, {'lr': 0.2, 'crop': (8, 8, 8)}, ignore=('lr',)
  )


def test_resume_needs_hparams(tmp_path):
  with pytest.raises(
    ValueError, match='resume needs a run folder with hparams'
  ):
    run_outputs.check_resumable(str(tmp_path), {})


def test_metrics_release_writes_the_csv_and_replaces_repeated_steps(tmp_path):
  metrics = run_outputs.MetricsRelease(str(tmp_path), 'epoch')
  assert metrics.rows() == []
  for epoch in (1, 2, 3):
    metrics.release({'epoch': epoch, 'loss': 1.0 / epoch, 'note': ''})
  rows = metrics.rows()
  assert [r['epoch'] for r in rows] == ['1', '2', '3']
  assert float(rows[2]['loss']) == pytest.approx(1 / 3)
  assert rows[0]['note'] == ''
  # A run resumed from epoch 1's checkpoint releases epoch 2 again: the
  # rows from 2 on are replaced, none is duplicated or lost.
  resumed = run_outputs.MetricsRelease(str(tmp_path), 'epoch')
  resumed.release({'epoch': 2, 'loss': 0.4, 'note': 'again'})
  assert [(r['epoch'], r['note']) for r in resumed.rows()] == [
    ('1', ''),
    ('2', 'again'),
  ]
  assert sorted(os.listdir(tmp_path)) == ['metrics.csv', 'tensorboard']


def test_metrics_release_adds_columns(tmp_path):
  metrics = run_outputs.MetricsRelease(str(tmp_path), 'round')
  metrics.release({'round': 1, 'loss': 0.5})
  metrics.release({'round': 2, 'loss': 0.25, 'dice': 0.75})
  rows = metrics.rows()
  assert list(rows[0]) == ['round', 'loss', 'dice']
  assert rows[0]['dice'] == ''
  assert rows[1]['dice'] == '0.75'


def _events(log_dir):
  scalars, images = {}, {}
  for path in tf.io.gfile.glob(os.path.join(log_dir, 'events*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        if value.metadata.plugin_data.plugin_name == 'images':
          images[(value.tag, event.step)] = tensor
        else:
          scalars[(value.tag, event.step)] = float(tensor)
  return scalars, images


def test_metrics_release_writes_finite_numbers_and_overlays(tmp_path):
  row = {
    'round': 3,
    'train_loss': 0.25,
    'steps': 4,
    'val_dice_mean': '',  # not evaluated this round
    'epsilon_worst': float('inf'),
    'val_hd95_WT': float('nan'),
    'client_ids': 'a b',
  }
  rng = np.random.default_rng(0)
  image = rng.normal(size=(8, 8, 8, 4)).astype(np.float32)
  truth = np.zeros((8, 8, 8, 3), bool)
  truth[2:5, 2:5, 2:5] = True
  evaluation = types.SimpleNamespace(examples=[('case_1', image, truth, truth)])
  metrics = run_outputs.MetricsRelease(str(tmp_path), 'round')
  metrics.release(row, evaluation)
  scalars, images = _events(str(tmp_path / 'tensorboard'))
  assert scalars == {('train_loss', 3): 0.25, ('steps', 3): 4.0}
  # The CSV keeps what TensorBoard cannot show.
  (written,) = metrics.rows()
  assert written['client_ids'] == 'a b'
  assert written['epsilon_worst'] == 'inf'
  assert written['val_hd95_WT'] == 'nan'
  assert written['val_dice_mean'] == ''
  ((tag, step),) = images
  assert (tag, step) == ('validation/case_1', 3)
  # An image summary is [width, height, encoded PNG].
  encoded = images[(tag, step)][2]
  assert encoded.startswith(b'\x89PNG')
