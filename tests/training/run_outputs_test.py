"""Tests for tff_brats.training.run_outputs."""

import json
import os

import pytest

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


def test_metrics_csv_append_and_truncate(tmp_path):
  metrics = run_outputs.MetricsCsv(str(tmp_path), 'epoch')
  assert metrics.rows() == []
  for epoch in (1, 2, 3):
    metrics.append({'epoch': epoch, 'loss': 1.0 / epoch, 'note': ''})
  assert [r['epoch'] for r in metrics.rows()] == ['1', '2', '3']
  assert metrics.rows()[2]['loss'] == '0.333333'
  metrics.truncate_after(1)
  assert [r['epoch'] for r in metrics.rows()] == ['1']
  metrics.truncate_after(0)
  assert not os.path.exists(metrics.path)
  assert os.listdir(tmp_path) == []


def test_metrics_csv_columns_are_fixed(tmp_path):
  metrics = run_outputs.MetricsCsv(str(tmp_path), 'epoch')
  metrics.append({'epoch': 1, 'loss': 0.5})
  with pytest.raises(
    ValueError, match=r"row columns must match .*\['epoch', 'dice'\]"
  ):
    metrics.append({'epoch': 2, 'dice': 0.5})
