"""Tests for tff_brats.evaluation.evaluate on tiny prepared folders."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os

import numpy as np
import pytest

from tests import testing_utils
from tests.inference import case_files
from tff_brats.evaluation import evaluate
from tff_brats.evaluation import scoring
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.models import model_io
from tff_brats.models import training_metadata

Options = options_lib.InferenceOptions
VALIDATION_SHAPES = ((16, 16, 16), (16, 12, 16))
SEED = 7


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  return testing_utils.write_prepared_folder(
    str(root),
    {'a': [(16, 16, 16)]},
    validation_shapes=VALIDATION_SHAPES,
    seed=SEED,
  )


def _predictor(fill, training=None, seen=None):
  """A predictor that calls every voxel `fill` (0 or 1) in every region."""

  def fn(batch):
    if seen is not None:
      seen.append(batch.shape)
    return np.full((*batch.shape[:4], 3), fill, np.float32)

  return predictors.Predictor(fn, training=training)


def _warnings(caplog):
  return [
    r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
  ]


def test_scores_are_those_of_the_prediction(prepared):
  # Everything predicted: Dice of region R is 2|R| / (|R| + N), N the
  # number of voxels of the stored crop (the whole synthetic case).
  result = evaluate.evaluate_prepared(
    _predictor(1.0), prepared, options=Options(window=8)
  )
  assert [row['case_id'] for row in result.per_case] == list(
    prepared.validation
  )
  for k, (row, shape) in enumerate(
    zip(result.per_case, VALIDATION_SHAPES, strict=True)
  ):
    # Validation cases follow the one client case in the seed order.
    _, regions = testing_utils.make_case(shape, seed=SEED + 1 + k)
    total = np.prod(shape)
    for r, name in enumerate(('TC', 'WT', 'ET')):
      size = regions[..., r].sum()
      assert row[f'dice_{name}'] == pytest.approx(2 * size / (size + total))
  assert result.mean_dice == pytest.approx(
    np.mean([row['dice_mean'] for row in result.per_case])
  )
  # Nothing predicted: Dice 0 and the worst-case HD95 in every region.
  empty = evaluate.evaluate_prepared(
    _predictor(0.0), prepared, options=Options(window=8)
  )
  for row in empty.per_case:
    assert row['dice_mean'] == 0.0
    assert row['hd95_mean'] == pytest.approx(scoring.WORST_CASE_HD95_MM)


def test_default_window_is_the_training_crop(prepared, caplog):
  seen = []
  record = training_metadata.TrainingMetadata((8, 4, 8), crop_margin=None)
  result = evaluate.evaluate_prepared(
    _predictor(1.0, record, seen), prepared, ['validation_case000']
  )
  assert {shape[1:4] for shape in seen} == {(8, 4, 8)}
  assert result.options.window == (8, 4, 8)
  assert result.options.resolved
  assert _warnings(caplog) == []


def test_explicit_window_other_than_the_record_warns(prepared, caplog):
  seen = []
  record = training_metadata.TrainingMetadata((8, 8, 8))
  evaluate.evaluate_prepared(
    _predictor(1.0, record, seen),
    prepared,
    ['validation_case000'],
    Options(window=(16, 16, 8)),
  )
  assert {shape[1:4] for shape in seen} == {(16, 16, 8)}
  (warning,) = _warnings(caplog)
  assert '(16, 16, 8)' in warning and '(8, 8, 8)' in warning


def test_no_record_and_no_window_keeps_the_64_default(prepared, caplog):
  seen = []
  result = evaluate.evaluate_prepared(
    _predictor(0.0, seen=seen), prepared, ['validation_case000']
  )
  # The 16^3 case is padded to one 64^3 window.
  assert seen == [(1, 64, 64, 64, 4)]
  assert result.options.window == evaluate.DEFAULT_WINDOW == (64, 64, 64)
  (warning,) = _warnings(caplog)
  assert 'records no training crop' in warning and '(64, 64, 64)' in warning


def test_prepared_with_another_crop_margin_warns(prepared, caplog):
  record = training_metadata.TrainingMetadata((8, 8, 8), crop_margin=2)
  with_margin = dataclasses.replace(prepared, request={'crop_margin': 0})
  evaluate.evaluate_prepared(
    _predictor(0.0, record), with_margin, ['validation_case000']
  )
  (warning,) = _warnings(caplog)
  assert 'prepared with crop_margin 0' in warning
  assert 'prepared with crop_margin 2' in warning
  caplog.clear()
  same = dataclasses.replace(prepared, request={'crop_margin': 2})
  evaluate.evaluate_prepared(
    _predictor(0.0, record), same, ['validation_case000']
  )
  assert _warnings(caplog) == []


def test_options_set_the_window_and_overlap(prepared):
  result = evaluate.evaluate_prepared(
    _predictor(1.0), prepared, options=Options(window=8, overlap=0.25)
  )
  assert result.options.window == (8, 8, 8)
  assert result.options.overlap == 0.25


def test_case_ids_are_checked(prepared):
  with pytest.raises(ValueError, match='case_ids must name at least one'):
    evaluate.evaluate_prepared(_predictor(1.0), prepared, [], Options(window=8))
  with pytest.raises(ValueError, match=r"Found unknown \['nope'\]"):
    evaluate.evaluate_prepared(
      _predictor(1.0), prepared, ['nope'], Options(window=8)
    )


def test_run_evaluation_records_the_window_and_the_training_record(
  prepared, tmp_path, caplog
):
  model_dir = str(tmp_path / 'model')
  record = training_metadata.TrainingMetadata((8, 8, 8), crop_margin=0)
  model_io.save_model(case_files.tiny_segresnet(), model_dir, training=record)
  out = tmp_path / 'eval'
  outputs = evaluate.run_evaluation(
    model=model_dir,
    data_dir=prepared.root,
    output_dir=str(out),
    num_figure_cases=0,
    progress=False,
  )
  assert sorted(outputs) == ['per_case_csv', 'summary_json']
  with open(outputs['summary_json']) as f:
    summary = json.load(f)
  assert summary['window'] == [8, 8, 8]
  assert summary['overlap'] == 0.5 and summary['blending'] == 'gaussian'
  assert summary['threshold'] == 0.5 and summary['batch_size'] == 1
  assert 'crop_margin' not in summary and 'output_layout' not in summary
  assert summary['training'] == {'crop_size': [8, 8, 8], 'crop_margin': 0}
  assert summary['num_cases'] == 2
  with open(outputs['per_case_csv']) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 4  # two cases, three regions and their mean
  assert not [w for w in _warnings(caplog) if 'window' in w]
  with pytest.raises(
    FileExistsError, match='per_case.csv exists; pass overwrite=True'
  ):
    evaluate.run_evaluation(
      model=model_dir,
      data_dir=prepared.root,
      output_dir=str(out),
      num_figure_cases=0,
      progress=False,
    )
  assert sorted(os.listdir(out)) == ['per_case.csv', 'summary.json']
