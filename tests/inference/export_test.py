"""Tests for tff_brats.inference.export.

The central claim — the SavedModel runs in plain TensorFlow without
tff_brats — is tested in a fresh Python process that imports only
TensorFlow and numpy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.inference import case_files
from tff_brats.data import pipeline
from tff_brats.inference import export
from tff_brats.models import model_io
from tff_brats.models import training_metadata

# A plain-TF consumer: loads each SavedModel, runs both signatures on the
# saved inputs, saves the outputs, and proves tff_brats was never imported.
_PLAIN_TF_SCRIPT = textwrap.dedent(
  """
  import json, sys
  import numpy as np
  import tensorflow as tf
  jobs = json.loads(sys.argv[1])
  for job in jobs:
    loaded = tf.saved_model.load(job['model'])
    assert sorted(loaded.signatures) == ['normalize', 'serving_default']
    serve = loaded.signatures['serving_default']
    for name in job['images']:
      image = tf.constant(np.load(name))
      out = serve(image=image)['probabilities']
      assert out.dtype == tf.float32
      np.save(name + '.out.npy', out.numpy())
    raw = tf.constant(np.load(job['raw']))
    normalised = loaded.signatures['normalize'](image=raw)['image']
    np.save(job['raw'] + '.out.npy', normalised.numpy())
  assert 'tff_brats' not in sys.modules, sorted(
    m for m in sys.modules if m.startswith('tff_brats'))
  print('plain-tf-ok')
  """
)


def _segresnet():
  segresnet = pytest.importorskip('tff_brats.models.segresnet')
  # Small but with every part of the real network: GroupNorm, residual
  # blocks, strided convolutions, trilinear upsampling, additive skips.
  return segresnet.SegResNet(
    init_filters=8, blocks_down=(1, 1, 1), blocks_up=(1, 1)
  )


@pytest.mark.slow  # a child process that imports TensorFlow (~5 s)
def test_saved_model_runs_in_plain_tensorflow(tmp_path):
  rng = np.random.default_rng(0)
  models = {'tiny': case_files.tiny_keras_model(seed=1)}
  if importlib.util.find_spec('tff_brats.models.segresnet') is not None:
    models['segresnet'] = _segresnet()
  jobs, expected = [], {}
  raw = case_files.make_image()
  raw_path = str(tmp_path / 'raw.npy')
  np.save(raw_path, raw)
  for name, model in models.items():
    path = export.export_saved_model(model, str(tmp_path / name))
    images = []
    # Dynamic batch and spatial sizes (multiples of SegResNet's 4 here).
    for k, shape in enumerate([(1, 8, 8, 8), (3, 16, 8, 12)]):
      image = rng.normal(size=(*shape, 4)).astype(np.float32)
      image_path = str(tmp_path / f'{name}-{k}.npy')
      np.save(image_path, image)
      images.append(image_path)
      expected[image_path] = model(image, training=False).numpy()
    jobs.append({'model': path, 'images': images, 'raw': raw_path})

  result = subprocess.run(
    [sys.executable, '-c', _PLAIN_TF_SCRIPT, json.dumps(jobs)],
    capture_output=True,
    text=True,
    cwd=str(tmp_path),
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    check=False,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  assert 'plain-tf-ok' in result.stdout
  for image_path, want in expected.items():
    got = np.load(image_path + '.out.npy')
    assert got.shape == (*want.shape[:4], 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(
    np.load(raw_path + '.out.npy'), pipeline.normalize_intensity(raw).numpy()
  )


def test_signatures_and_metadata(tmp_path):
  path = export.export_saved_model(
    case_files.tiny_keras_model(), str(tmp_path / 'out'), source='/runs/x'
  )
  assert path == str(tmp_path / 'out')
  loaded = tf.saved_model.load(path)
  serve = loaded.signatures['serving_default']
  (spec,) = serve.structured_input_signature[1].values()
  assert spec.name == 'image' and spec.dtype == tf.float32
  assert spec.shape.as_list() == [None, None, None, None, 4]
  output = serve.structured_outputs['probabilities']
  assert output.dtype == tf.float32 and output.shape.as_list()[-1] == 3
  normalize = loaded.signatures['normalize']
  assert normalize.structured_input_signature[1]['image'].shape.as_list() == [
    None,
    None,
    None,
    4,
  ]
  metadata = export.read_metadata(path)
  assert metadata['format'] == export.FORMAT
  assert metadata['size_multiple'] == 1
  assert metadata['source'] == '/runs/x'
  assert metadata['regions'] == ['TC', 'WT', 'ET']
  assert metadata['modalities']['brats2023'] == ['t1n', 't1c', 't2w', 't2f']
  assert sorted(metadata['signatures']) == ['normalize', 'serving_default']
  assert metadata['training'] is None
  assert export.read_training_metadata(path) is None


def test_size_multiple_comes_from_the_model(tmp_path):
  path = export.export_saved_model(_segresnet(), str(tmp_path / 'out'))
  assert export.read_metadata(path)['size_multiple'] == 4


def test_refuses_to_overwrite_unless_asked(tmp_path):
  out = str(tmp_path / 'out')
  export.export_saved_model(case_files.tiny_keras_model(seed=1), out)
  before = tf.saved_model.load(out).signatures['serving_default']
  image = tf.ones([1, 4, 4, 4, 4])
  first = before(image=image)['probabilities'].numpy()
  second_model = case_files.tiny_keras_model(seed=2)
  with pytest.raises(FileExistsError, match='must not exist unless') as info:
    export.export_saved_model(second_model, out)
  assert out in str(info.value)
  reloaded = tf.saved_model.load(out).signatures['serving_default']
  np.testing.assert_array_equal(reloaded(image=image)['probabilities'], first)
  export.export_saved_model(second_model, out, overwrite=True)
  replaced = tf.saved_model.load(out).signatures['serving_default']
  np.testing.assert_allclose(
    replaced(image=image)['probabilities'],
    second_model(image, training=False),
    atol=1e-6,
  )
  assert sorted(os.listdir(tmp_path)) == ['out']


def test_overwrite_only_replaces_a_saved_model(tmp_path):
  folder = tmp_path / 'results'
  folder.mkdir()
  (folder / 'precious.txt').write_text('keep me')
  with pytest.raises(ValueError, match='refusing to replace it'):
    export.export_saved_model(
      case_files.tiny_keras_model(), str(folder), overwrite=True
    )
  assert (folder / 'precious.txt').read_text() == 'keep me'
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  with pytest.raises(ValueError, match='output_dir must be a folder'):
    export.export_saved_model(case_files.tiny_keras_model(), str(a_file))
  # An empty folder is fine.
  (tmp_path / 'empty').mkdir()
  export.export_saved_model(
    case_files.tiny_keras_model(), str(tmp_path / 'empty')
  )
  assert export.is_exported_saved_model(str(tmp_path / 'empty'))


def test_bad_model_leaves_nothing_behind(tmp_path):
  inputs = tf.keras.Input((None, None, None, 4))
  two_channels = tf.keras.Model(
    inputs, tf.keras.layers.Conv3D(2, 1, activation='sigmoid')(inputs)
  )
  with pytest.raises(ValueError, match=r'model must return .* Found shape'):
    export.export_saved_model(two_channels, str(tmp_path / 'out'))
  inputs = tf.keras.Input((None, None, None, 2))
  two_inputs = tf.keras.Model(
    inputs, tf.keras.layers.Conv3D(3, 1, activation='sigmoid')(inputs)
  )
  with pytest.raises(ValueError, match=r'model must accept float32'):
    export.export_saved_model(two_inputs, str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='size_multiple must be a positive'):
    export.export_saved_model(
      case_files.tiny_keras_model(), str(tmp_path / 'out'), size_multiple=0
    )
  assert os.listdir(tmp_path) == []


def test_export_model_dir_errors(tmp_path):
  with pytest.raises(ValueError, match='model_dir must be a model folder'):
    export.export_model_dir(str(tmp_path / 'none'), str(tmp_path / 'out'))
  (tmp_path / 'model').mkdir()
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'x').write_text('')
  with pytest.raises(FileExistsError, match='must not exist unless'):
    export.export_model_dir(str(tmp_path / 'model'), str(tmp_path / 'out'))


def test_export_model_dir_round_trip(tmp_path):
  model = _segresnet()
  model(tf.zeros([1, 8, 8, 8, 4]))
  model_io.save_model(model, str(tmp_path / 'model'))
  path = export.export_model_dir(str(tmp_path / 'model'), str(tmp_path / 'out'))
  metadata = export.read_metadata(path)
  assert metadata['source'] == str(tmp_path / 'model')
  assert metadata['size_multiple'] == 4
  image = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 4))
  image = image.astype(np.float32)
  got = tf.saved_model.load(path).signatures['serving_default'](
    image=tf.constant(image)
  )['probabilities']
  np.testing.assert_allclose(got, model(image, training=False), atol=1e-5)
  # A folder saved without a training record exports none.
  assert metadata['training'] is None
  assert export.read_training_metadata(path) is None


def test_training_record_is_kept(tmp_path):
  record = training_metadata.TrainingMetadata((48, 48, 32), crop_margin=2)
  path = export.export_saved_model(
    case_files.tiny_keras_model(), str(tmp_path / 'direct'), training=record
  )
  assert export.read_metadata(path)['training'] == {
    'crop_size': [48, 48, 32],
    'crop_margin': 2,
  }
  assert export.read_training_metadata(path) == record
  with pytest.raises(ValueError, match='training must be a TrainingMetadata'):
    export.export_saved_model(
      case_files.tiny_keras_model(),
      str(tmp_path / 'bad'),
      training={'crop_size': [8, 8, 8]},
    )
  assert not (tmp_path / 'bad').exists()


def test_export_model_dir_copies_the_training_record(tmp_path):
  model = _segresnet()
  model(tf.zeros([1, 8, 8, 8, 4]))
  record = training_metadata.TrainingMetadata((16, 16, 8), crop_margin=None)
  model_io.save_model(model, str(tmp_path / 'model'), training=record)
  path = export.export_model_dir(str(tmp_path / 'model'), str(tmp_path / 'out'))
  assert export.read_training_metadata(path) == record
  assert export.read_metadata(path)['training'] == {
    'crop_size': [16, 16, 8],
    'crop_margin': None,
  }


def test_malformed_training_record_is_named(tmp_path):
  path = export.export_saved_model(
    case_files.tiny_keras_model(), str(tmp_path / 'out')
  )
  metadata_path = os.path.join(path, export.METADATA_PATH)
  with open(metadata_path) as f:
    metadata = json.load(f)
  metadata['training'] = {'crop_size': [8, 8]}
  with open(metadata_path, 'w') as f:
    json.dump(metadata, f)
  with pytest.raises(ValueError, match='field "training" is invalid') as info:
    export.read_training_metadata(path)
  assert metadata_path in str(info.value)


def test_read_metadata_rejects_other_formats(tmp_path):
  assert export.read_metadata(str(tmp_path)) is None
  (tmp_path / 'assets.extra').mkdir()
  (tmp_path / 'assets.extra' / 'export.json').write_text('{"format": "x"}')
  with pytest.raises(ValueError, match="format must be 'tff_brats.export/1'"):
    export.read_metadata(str(tmp_path))
