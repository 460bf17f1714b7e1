"""The exported model as Keras users and plain-TensorFlow users load it.

* A `.keras` file (`model_io.save_keras`) loads in a fresh Python with
  `tf.keras.models.load_model` after `import tff_brats`, with no custom
  objects: a `SegResNet` that predicts what the source model predicted,
  prints a summary and fits (gradients through the custom GroupNorm
  gradient). Without tff_brats the error names the package.
* A newer format is refused with a message to upgrade, from each form.
* The SavedModel keeps its custom gradients: gradients of its
  `serving_default` output reach every trainable variable.
* `model_sources` rebuilds the same model from all three forms and refuses
  another architecture.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.inference import export
from tff_brats.inference import model_sources
from tff_brats.inference import predictors
from tff_brats.models import model_io
from tff_brats.models import segresnet
from tff_brats.models import training_metadata

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TRAINING = training_metadata.TrainingMetadata(
  crop_size=(16, 16, 16), crop_margin=2
)


def _model(seed=0, **kwargs):
  tf.keras.utils.set_random_seed(seed)
  config = dict(init_filters=8, blocks_down=(1, 1), blocks_up=(1,))
  config.update(kwargs)
  model = segresnet.SegResNet(**config)
  model(tf.zeros([1, 16, 16, 16, 4]))
  return model


def _batch(seed=1):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(2, 16, 16, 16, 4)).astype(np.float32)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """One model in all three forms, and its outputs on a batch."""
  root = tmp_path_factory.mktemp('forms')
  model = _model()
  batch = _batch()
  expected = model(batch, training=False).numpy()
  folder = str(root / 'model')
  model_io.save_model(model, folder, training=TRAINING)
  keras_path = export.export_keras_file(folder, str(root / 'model.keras'))
  saved_model = export.export_model_dir(folder, str(root / 'exported'))
  np.save(root / 'batch.npy', batch)
  np.save(root / 'expected.npy', expected)
  return {
    'root': root,
    'model': model,
    'model_io': folder,
    'keras': keras_path,
    'saved_model': saved_model,
    'batch': batch,
    'expected': expected,
  }


_FRESH = textwrap.dedent(
  """
  import json, sys
  import numpy as np
  import tensorflow as tf
  import tff_brats  # registers the layers; nothing else is needed

  path, root = sys.argv[1], sys.argv[2]
  model = tf.keras.models.load_model(path)
  batch = np.load(root + '/batch.npy')
  predicted = model.predict(batch, verbose=0)
  lines = []
  model.summary(print_fn=lines.append)
  norm = model.get_layer('down0').blocks[0].norm1
  gamma_before = norm.gamma.numpy().copy()
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2),
                loss=tf.keras.losses.BinaryCrossentropy())
  history = model.fit(batch, (predicted > 0.5).astype(np.float32),
                      batch_size=1, epochs=1, steps_per_epoch=2, verbose=0)
  print(json.dumps({
    'type': type(model).__module__ + '.' + type(model).__name__,
    'max_difference': float(np.abs(
      predicted - np.load(root + '/expected.npy')).max()),
    'summary_has_layers': any('down0' in l for l in lines),
    'parameters': int(model.count_params()),
    'losses': history.history['loss'],
    'gamma_change': float(np.abs(norm.gamma.numpy() - gamma_before).max()),
  }))
  """
)


def _fresh_python(code, *args, timeout=300):
  return subprocess.run(
    [sys.executable, '-c', code, *args],
    cwd=_REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
  )


def test_keras_file_loads_predicts_summarises_and_fits_in_a_fresh_process(
  saved,
):
  result = _fresh_python(_FRESH, saved['keras'], str(saved['root']))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['type'] == 'tff_brats.models.segresnet.SegResNet'
  assert report['max_difference'] < 1e-5
  assert report['summary_has_layers']
  assert report['parameters'] == saved['model'].count_params()
  assert len(report['losses']) == 1 and np.isfinite(report['losses'][0])
  # The GroupNorm scale moved: gradients flowed through its custom gradient.
  assert report['gamma_change'] > 0


def test_without_tff_brats_the_error_names_the_package(saved):
  code = textwrap.dedent(
    """
    import sys
    sys.modules['tff_brats'] = None  # as if it were not installed
    import tensorflow as tf
    tf.keras.models.load_model(sys.argv[1])
    """
  )
  result = _fresh_python(code, saved['keras'])
  assert result.returncode != 0
  assert 'tff_brats.models.segresnet cannot be imported' in result.stderr


def _rewrite_entry(source, target, name, change):
  """Copies the zip `source` to `target` with entry `name` changed."""
  with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, 'w') as new:
    for item in old.infolist():
      data = old.read(item.filename)
      if item.filename == name:
        data = json.dumps(change(json.loads(data))).encode()
      new.writestr(item, data)
  return str(target)


def test_a_newer_format_asks_to_upgrade(saved, tmp_path):
  # The architecture's config, as Keras reads it directly.
  def newer_config(config):
    config['config'][segresnet.SERIALIZATION_VERSION_KEY] = 99
    return config

  newer = _rewrite_entry(
    saved['keras'], tmp_path / 'newer.keras', 'config.json', newer_config
  )
  with pytest.raises(ValueError, match=r'newer tff_brats .*Upgrade tff_brats'):
    tf.keras.models.load_model(newer)

  # The project's own record in the archive.
  def newer_record(record):
    record['format_version'] = 2
    return record

  newer = _rewrite_entry(
    saved['keras'],
    tmp_path / 'record.keras',
    model_io.KERAS_RECORD,
    newer_record,
  )
  with pytest.raises(
    ValueError, match=r'"format_version" is 2, from a newer tff_brats'
  ):
    model_io.load_keras(newer)

  # A model folder.
  folder = tmp_path / 'folder'
  model_io.save_model(saved['model'], str(folder))
  config_path = folder / model_io.CONFIG_FILE
  config = json.loads(config_path.read_text())
  config['format_version'] = 2
  config_path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r'from a newer tff_brats.*Upgrade'):
    model_io.load_model(str(folder))


def test_saved_model_keeps_its_custom_gradients(saved, caplog):
  with caplog.at_level(logging.WARNING, logger='absl'):
    loaded = tf.saved_model.load(saved['saved_model'])
  assert 'unsaved custom gradients' not in caplog.text
  serve = loaded.signatures[export.SERVING_SIGNATURE]
  variables = [v for v in loaded.model_variables if v.trainable]
  with tf.GradientTape() as tape:
    probabilities = serve(image=tf.constant(saved['batch']))[export.OUTPUT_NAME]
    loss = tf.reduce_mean(probabilities)
  gradients = tape.gradient(loss, variables)
  assert len(variables) == len(saved['model'].trainable_variables)
  assert all(g is not None for g in gradients)
  assert all(np.isfinite(g.numpy()).all() for g in gradients)
  assert float(tf.linalg.global_norm(gradients)) > 0


@pytest.mark.parametrize('kind', model_sources.KINDS)
def test_every_form_gives_back_the_model_and_its_record(saved, kind):
  assert model_sources.kind_of(saved[kind]) == kind
  model, training = model_sources.load_model(saved[kind])
  assert isinstance(model, segresnet.SegResNet)
  assert training == TRAINING
  np.testing.assert_allclose(
    model(saved['batch'], training=False).numpy(), saved['expected'], atol=1e-5
  )
  # Into a model built for a run (another seed), weights only.
  target = _model(seed=5)
  model_sources.load_weights_into(target, saved[kind])
  for a, b in zip(target.weights, saved['model'].weights, strict=True):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # predict.py's loader takes the form too.
  predictor = predictors.load_predictor(saved[kind])
  assert predictor.training == TRAINING


@pytest.mark.parametrize('kind', model_sources.KINDS)
def test_another_architecture_is_refused_by_every_form(saved, kind):
  deeper = _model(blocks_down=(1, 2))
  with pytest.raises(
    ValueError,
    match=r'field "config.blocks_down" is \(1, 1\), but the model to start '
    r'from it has \(1, 2\)',
  ):
    model_sources.load_weights_into(deeper, saved[kind])


def test_what_is_not_a_model_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    model_sources.kind_of(str(tmp_path / 'missing'))
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(ValueError, match='Found the file'):
    model_sources.kind_of(str(tmp_path / 'notes.txt'))
  with pytest.raises(ValueError, match='Found the folder'):
    model_sources.kind_of(str(tmp_path))
