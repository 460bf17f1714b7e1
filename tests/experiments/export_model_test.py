"""Tests of the export_model binary: `main` in-process, one child run.

`tff_brats.inference.export` is tested in tests/inference/export_test.py;
these tests check that the flags reach it and what the binary prints.
"""

from __future__ import annotations

import os

from absl import app
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf

from experiments import export_model
from tests.experiments import binaries
from tff_brats.inference import export
from tff_brats.models import model_io
from tff_brats.models import segresnet
from tff_brats.models import training_metadata

# Each SavedModel export traces the network (seconds).
pytestmark = pytest.mark.slow


def _main(argv=('export_model',), **flag_values):
  with flagsaver.flagsaver(**flag_values):
    export_model.main(list(argv))


def _error(**flag_values):
  """The one-line message `main` stops with."""
  with pytest.raises(SystemExit) as exit_info:
    _main(**flag_values)
  message = str(exit_info.value)
  assert message.startswith('export_model: error: ')
  assert '\n' not in message
  return message


def _save_tiny_model(path, training=None):
  model = segresnet.SegResNet(
    init_filters=8, blocks_down=(1, 1), blocks_up=(1,)
  )
  model(tf.zeros([1, 4, 4, 4, 4]))
  model_io.save_model(model, str(path), training=training)
  return model


def test_exports_a_model_io_folder(tmp_path, capsys):
  model = _save_tiny_model(tmp_path / 'model')
  out = tmp_path / 'exported'
  _main(model_dir=str(tmp_path / 'model'), output_dir=str(out))
  stdout = capsys.readouterr().out
  assert f'SavedModel: {out}' in stdout
  assert f'Keras file: {out}.keras' in stdout
  assert 'Training record: none' in stdout
  assert export.read_training_metadata(str(out)) is None
  image = np.random.default_rng(0).normal(size=(2, 8, 4, 6, 4))
  image = image.astype(np.float32)
  serve = tf.saved_model.load(str(out)).signatures['serving_default']
  np.testing.assert_allclose(
    serve(image=tf.constant(image))['probabilities'],
    model(image, training=False),
    atol=1e-5,
  )
  np.testing.assert_allclose(
    tf.keras.models.load_model(f'{out}.keras')(image, training=False),
    model(image, training=False),
    atol=1e-5,
  )
  message = _error(model_dir=str(tmp_path / 'model'), output_dir=str(out))
  for part in ('must not exist unless', '--overwrite', f'{out}.keras'):
    assert part in message
  # Without the .keras file in the way, the SavedModel folder is refused.
  os.remove(f'{out}.keras')
  message = _error(model_dir=str(tmp_path / 'model'), output_dir=str(out))
  for part in ('must not exist unless', '--overwrite', str(out)):
    assert part in message
  assert not os.path.exists(f'{out}.keras')
  _main(model_dir=str(tmp_path / 'model'), output_dir=str(out), overwrite=True)
  assert f'SavedModel: {out}' in capsys.readouterr().out
  # An explicit --keras_output; an empty one writes none.
  _main(
    model_dir=str(tmp_path / 'model'),
    output_dir=str(tmp_path / 'other'),
    keras_output=str(tmp_path / 'named.keras'),
  )
  assert os.path.isfile(tmp_path / 'named.keras')
  _main(
    model_dir=str(tmp_path / 'model'),
    output_dir=str(tmp_path / 'third'),
    keras_output='',
  )
  assert not os.path.exists(tmp_path / 'third.keras')


def test_the_training_record_is_copied(tmp_path, capsys):
  record = training_metadata.TrainingMetadata((48, 48, 48), crop_margin=2)
  _save_tiny_model(tmp_path / 'model', training=record)
  out = tmp_path / 'exported'
  _main(model_dir=str(tmp_path / 'model'), output_dir=str(out))
  stdout = capsys.readouterr().out
  assert 'Training record: crop [48, 48, 48], crop margin 2.' in stdout
  assert export.read_training_metadata(str(out)) == record


def test_missing_model_dir(tmp_path):
  message = _error(
    model_dir=str(tmp_path / 'none'), output_dir=str(tmp_path / 'out')
  )
  assert 'model_dir must be a model folder' in message
  assert f"'{tmp_path / 'none'}'" in message
  assert not (tmp_path / 'out').exists()


def test_existing_output_is_refused_before_loading(tmp_path):
  (tmp_path / 'model').mkdir()  # not even a model: the output check is first
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('keep')
  message = _error(model_dir=str(tmp_path / 'model'), output_dir=str(out))
  assert 'must not exist unless overwrite=True (--overwrite)' in message
  assert sorted(os.listdir(out)) == ['keep.txt']


def test_missing_flags_and_stray_arguments(tmp_path):
  with pytest.raises(app.UsageError, match=r'--model_dir, --output_dir$'):
    _main()
  with pytest.raises(
    app.UsageError, match=r"Unexpected arguments: \['extra'\]"
  ):
    _main(
      ['export_model', 'extra'],
      model_dir=str(tmp_path),
      output_dir=str(tmp_path / 'out'),
    )
  assert not (tmp_path / 'out').exists()


def test_smoke_child_process(tmp_path):
  record = training_metadata.TrainingMetadata((16, 16, 16), crop_margin=0)
  _save_tiny_model(tmp_path / 'model', training=record)
  out = tmp_path / 'exported'
  result = binaries.run_binary(
    'export_model', f'--model_dir={tmp_path / "model"}', f'--output_dir={out}'
  )
  assert result.returncode == 0, result.stderr
  assert 'Training record: crop [16, 16, 16], crop margin 0.' in result.stdout
  assert os.path.exists(out / 'saved_model.pb')
