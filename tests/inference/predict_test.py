"""Tests for tff_brats.inference.predict (runs over several cases)."""

from __future__ import annotations

import logging
import os

import nibabel as nib
import numpy as np
import pytest

from tests.inference import case_files
from tff_brats.data import layouts
from tff_brats.data import reader
from tff_brats.inference import case_prediction
from tff_brats.inference import export
from tff_brats.inference import options as options_lib
from tff_brats.inference import predict
from tff_brats.inference import predictors
from tff_brats.inference import segmentation_io
from tff_brats.models import model_io
from tff_brats.models import training_metadata

B18 = layouts.BRATS2018
B23 = layouts.BRATS2023
ID18 = 'Brats18_CBICA_AAA_1'
ID23 = 'BraTS-GLI-00001-000'
Options = options_lib.InferenceOptions


def _expected_labels(layout, shape=case_files.SHAPE):
  return layouts.regions_to_labels(case_files.marker_regions(shape), layout)


def _warnings(caplog):
  """The warnings of `options` (not TensorFlow's about loading models)."""
  return [
    r.getMessage()
    for r in caplog.records
    if r.levelno == logging.WARNING and r.pathname == options_lib.__file__
  ]


def _two_cases(tmp_path):
  case_files.write_case(tmp_path / 'data', ID18)
  case_files.write_case(tmp_path / 'data', ID23, B23)
  return segmentation_io.resolve_cases(data_dir=str(tmp_path / 'data'))


def test_segment_cases_checks_every_output_before_any_work(tmp_path):
  cases = _two_cases(tmp_path)
  out = tmp_path / 'out'
  out.mkdir()
  (out / f'{ID18}.nii.gz').write_bytes(b'old')  # the second case's output
  calls = []

  def counting(batch):
    calls.append(1)
    return case_files.marker_predictor()(batch)

  with pytest.raises(FileExistsError, match=f'{ID18}.nii.gz'):
    predict.segment_cases(
      counting, cases, str(out), Options(window=8), progress=False
    )
  assert not calls
  assert sorted(os.listdir(out)) == [f'{ID18}.nii.gz']
  written = predict.segment_cases(
    counting, cases, str(out), Options(window=8), overwrite=True, progress=False
  )
  assert written == [str(out / f'{ID23}.nii.gz'), str(out / f'{ID18}.nii.gz')]
  for path, layout in zip(written, (B23, B18), strict=True):
    np.testing.assert_array_equal(
      np.asanyarray(nib.load(path).dataobj), _expected_labels(layout)
    )


def test_segment_cases_uses_the_record_and_warns_once(tmp_path, caplog):
  cases = _two_cases(tmp_path)
  seen = []
  record = training_metadata.TrainingMetadata((4, 4, 4), crop_margin=1)
  predictor = case_files.marker_predictor(training=record, seen=seen)
  predict.segment_cases(predictor, cases, str(tmp_path / 'a'), progress=False)
  assert {shape[1:4] for shape in seen} == {(4, 4, 4)}
  assert _warnings(caplog) == []
  seen.clear()
  predict.segment_cases(
    predictor, cases, str(tmp_path / 'b'), Options(window=8), progress=False
  )
  assert {shape[1:4] for shape in seen} == {(8, 8, 8)}
  # Two cases, one warning, naming both windows.
  (warning,) = _warnings(caplog)
  assert '(8, 8, 8)' in warning and '(4, 4, 4)' in warning


def test_a_window_that_does_not_fit_stops_before_any_output(tmp_path):
  cases = _two_cases(tmp_path)
  with pytest.raises(ValueError, match='window must be a multiple of 4'):
    predict.segment_cases(
      case_files.marker_predictor(size_multiple=4),
      cases,
      str(tmp_path / 'out'),
      Options(window=6),
      progress=False,
    )
  assert not (tmp_path / 'out').exists()


@pytest.fixture(scope='module')
def recorded_model(tmp_path_factory):
  """A model folder recording 8x8x4 crops with margin 1, and its export."""
  root = tmp_path_factory.mktemp('models')
  folder = str(root / 'model')
  model_io.save_model(
    case_files.tiny_segresnet(seed=5),
    folder,
    training=training_metadata.TrainingMetadata((8, 8, 4), crop_margin=1),
  )
  return folder, export.export_model_dir(folder, str(root / 'exported'))


@pytest.mark.parametrize('kind', ['model_io', 'saved_model'])
def test_run_prediction_defaults_to_the_recorded_crop(
  tmp_path, recorded_model, kind, caplog
):
  model = recorded_model[0] if kind == 'model_io' else recorded_model[1]
  case_dir = case_files.write_case(tmp_path / 'data', ID18)
  (written,) = predict.run_prediction(
    model=model,
    output_dir=str(tmp_path / 'out'),
    case_dir=case_dir,
    progress=False,
  )
  assert _warnings(caplog) == []
  case = reader.case_from_directory(case_dir, require_label=False)
  expected = case_prediction.predict_case(
    predictors.load_predictor(model),
    case,
    Options(window=(8, 8, 4), crop_margin=1),
  )
  assert expected.crop_box == ((2, 16), (1, 15), (3, 13))
  np.testing.assert_array_equal(
    np.asanyarray(nib.load(written).dataobj), expected.labels
  )


def test_run_prediction_warns_about_a_window_other_than_the_record(
  tmp_path, recorded_model, caplog
):
  case_dir = case_files.write_case(tmp_path / 'data', ID18)
  predict.run_prediction(
    model=recorded_model[1],
    output_dir=str(tmp_path / 'out'),
    case_dir=case_dir,
    options=Options(window=16, crop_margin=0),
    progress=False,
  )
  window_warning, margin_warning = _warnings(caplog)
  assert '(16, 16, 16)' in window_warning and '(8, 8, 4)' in window_warning
  assert margin_warning.startswith('crop_margin 0 differs')
  assert ', 1;' in margin_warning


def test_run_prediction_without_a_record_keeps_the_default(tmp_path, caplog):
  exported = export.export_saved_model(
    case_files.tiny_keras_model(), str(tmp_path / 'exported')
  )
  case_dir = case_files.write_case(tmp_path / 'data', ID18)
  (written,) = predict.run_prediction(
    model=exported,
    output_dir=str(tmp_path / 'out'),
    case_dir=case_dir,
    progress=False,
  )
  (warning,) = _warnings(caplog)
  assert 'records no training crop' in warning
  assert str(options_lib.DEFAULT_WINDOW) in warning
  expected = case_prediction.predict_case(
    predictors.load_predictor(exported),
    reader.case_from_directory(case_dir, require_label=False),
    Options(window=options_lib.DEFAULT_WINDOW, crop_margin=0),
  ).labels
  np.testing.assert_array_equal(
    np.asanyarray(nib.load(written).dataobj), expected
  )


def test_run_prediction_checks_before_loading(tmp_path):
  case_dir = case_files.write_case(tmp_path / 'data', ID18)
  with pytest.raises(ValueError, match='options must be an InferenceOptions'):
    predict.run_prediction(
      model=str(tmp_path), output_dir=str(tmp_path / 'o'), options={}
    )
  with pytest.raises(ValueError, match='which does not exist'):
    predict.run_prediction(
      model=str(tmp_path / 'none'),
      output_dir=str(tmp_path / 'out'),
      case_dir=case_dir,
    )
  with pytest.raises(ValueError, match='exactly one input form'):
    predict.run_prediction(model='m', output_dir=str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()
