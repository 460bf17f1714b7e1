"""Tests for tff_brats.inference.predictors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.inference import case_files
from tff_brats.data import reader
from tff_brats.inference import case_prediction
from tff_brats.inference import export
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.models import model_io
from tff_brats.models import training_metadata

RECORD = training_metadata.TrainingMetadata(crop_size=(8, 8, 12), crop_margin=1)


def test_predictor_wraps_a_function():
  predictor = predictors.Predictor(
    lambda batch: batch[..., :3] * 2, size_multiple=4, training=RECORD
  )
  batch = np.arange(2 * 4 * 4 * 4 * 4).reshape(2, 4, 4, 4, 4)
  out = predictor(batch)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, batch[..., :3] * 2)
  assert predictor.source == 'function' and predictor.path is None
  assert predictor.size_multiple == 4 and predictor.training == RECORD
  assert repr(predictor) == "Predictor(source='function')"
  with pytest.raises(ValueError, match='size_multiple must be a positive'):
    predictors.Predictor(lambda b: b, size_multiple=0)
  with pytest.raises(ValueError, match="source must be one of .*'disk'"):
    predictors.Predictor(lambda b: b, source='disk')
  with pytest.raises(ValueError, match='training must be a TrainingMetadata'):
    predictors.Predictor(lambda b: b, training={'crop_size': [8, 8, 8]})


def test_saved_model_predictor_matches_keras(tmp_path):
  model = case_files.tiny_keras_model(seed=3)
  path = export.export_saved_model(model, str(tmp_path / 'exported'))
  predictor = predictors.load_predictor(path)
  assert predictor.source == 'saved_model' and predictor.path == path
  assert predictor.training is None  # exported without a record
  batch = np.random.default_rng(0).normal(size=(2, 8, 6, 4, 4))
  expected = model(batch.astype(np.float32), training=False).numpy()
  np.testing.assert_allclose(predictor(batch), expected, atol=1e-6)
  keras = predictors.from_keras_model(model)
  assert keras.source == 'keras' and keras.training is None
  np.testing.assert_allclose(keras(batch), expected, atol=1e-6)
  assert predictors.from_keras_model(model, training=RECORD).training == RECORD


def test_saved_model_predictor_reads_size_multiple(tmp_path):
  path = export.export_saved_model(
    case_files.tiny_keras_model(), str(tmp_path / 'exported'), size_multiple=4
  )
  predictor = predictors.load_predictor(path)
  assert predictor.size_multiple == 4
  case = reader.case_from_directory(
    case_files.write_case(tmp_path, 'Brats18_CBICA_AAA_1'),
    require_label=False,
  )
  with pytest.raises(ValueError, match='window must be a multiple of 4'):
    case_prediction.predict_case(
      predictor, case, options_lib.InferenceOptions(window=6)
    )


def test_plain_keras_saved_model_with_other_names(tmp_path):
  # A SavedModel not written by export: one input, one output, other names.
  model = case_files.tiny_keras_model()
  path = str(tmp_path / 'keras_saved_model')
  tf.saved_model.save(model, path)
  predictor = predictors.load_predictor(path)
  batch = np.random.default_rng(1).normal(size=(1, 4, 4, 4, 4))
  np.testing.assert_allclose(
    predictor(batch), model(batch.astype(np.float32)).numpy(), atol=1e-6
  )
  assert predictor.size_multiple == 1
  assert predictor.training is None


def test_model_io_predictor(tmp_path):
  model = case_files.tiny_segresnet()
  path = str(tmp_path / 'model')
  model_io.save_model(model, path)
  assert predictors.MODEL_IO_CONFIG == model_io.CONFIG_FILE
  assert predictors.model_kind(path) == 'model_io'
  predictor = predictors.load_predictor(path)
  assert predictor.source == 'model_io' and predictor.path == path
  assert predictor.size_multiple == model.size_multiple == 4
  # A folder written without a record (as before records existed).
  assert predictor.training is None
  batch = np.random.default_rng(2).normal(size=(2, 8, 4, 12, 4))
  np.testing.assert_allclose(
    predictor(batch),
    model(batch.astype(np.float32), training=False).numpy(),
    atol=1e-6,
  )
  # A broken model_io folder is a ValueError naming it.
  with open(os.path.join(path, model_io.CONFIG_FILE), 'w') as f:
    f.write('{not json')
  with pytest.raises(ValueError, match='must be a loadable model_io folder'):
    predictors.load_predictor(path)


def test_training_record_from_model_folder_through_export(tmp_path):
  model = case_files.tiny_segresnet(seed=1)
  folder = str(tmp_path / 'model')
  model_io.save_model(model, folder, training=RECORD)
  from_folder = predictors.load_predictor(folder)
  assert from_folder.training == RECORD
  exported = export.export_model_dir(folder, str(tmp_path / 'exported'))
  from_export = predictors.load_predictor(exported)
  assert from_export.training == RECORD
  assert from_export.size_multiple == 4
  # Both predict with the training crop by default.
  resolved = options_lib.resolve_for(None, from_export)
  assert (resolved.window, resolved.crop_margin) == ((8, 8, 12), 1)


def test_malformed_training_record_is_named(tmp_path):
  folder = str(tmp_path / 'model')
  model_io.save_model(case_files.tiny_segresnet(), folder, training=RECORD)
  config = os.path.join(folder, model_io.CONFIG_FILE)
  with open(config) as f:
    manifest = json.load(f)
  manifest['training']['crop_margin'] = -2
  with open(config, 'w') as f:
    json.dump(manifest, f)
  with pytest.raises(
    ValueError,
    match=r'loadable model_io folder.*field "training" is invalid: '
    r'crop_margin must be a non-negative integer. Found -2.',
  ):
    predictors.load_predictor(folder)


def test_model_kind_by_files(tmp_path):
  (tmp_path / 'saved').mkdir()
  (tmp_path / 'saved' / 'saved_model.pb').write_bytes(b'')
  (tmp_path / 'io').mkdir()
  (tmp_path / 'io' / 'config.json').write_text('{}')
  assert predictors.model_kind(str(tmp_path / 'saved')) == 'saved_model'
  assert predictors.model_kind(str(tmp_path / 'io')) == 'model_io'


@pytest.mark.parametrize(
  'setup, found',
  [
    (lambda p: None, 'which does not exist'),
    (lambda p: p.write_text('x'), 'Found a file'),
    (
      lambda p: (p.mkdir(), (p / 'weights.h5').write_text('')),
      'holding weights.h5',
    ),
    (lambda p: p.mkdir(), 'holding nothing'),
  ],
)
def test_load_predictor_names_the_bad_path(tmp_path, setup, found):
  path = tmp_path / 'model'
  setup(path)
  with pytest.raises(ValueError, match=found) as info:
    predictors.load_predictor(str(path))
  message = str(info.value)
  assert message.startswith('model must be an exported SavedModel folder')
  assert str(path) in message


def test_corrupt_saved_model_is_a_value_error(tmp_path):
  path = tmp_path / 'broken'
  path.mkdir()
  (path / 'saved_model.pb').write_bytes(b'\x00garbage')
  with pytest.raises(ValueError, match='must be a loadable SavedModel'):
    predictors.load_predictor(str(path))
