"""Tests for tff_brats.models.model_io."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.models import model_io
from tff_brats.models import segresnet
from tff_brats.models import training_metadata

_TINY = dict(init_filters=4, norm_groups=2, blocks_down=(1, 2), blocks_up=(1,))

# After tf.keras.utils.set_random_seed (other test modules), Keras 2.14
# draws dropout seeds with random.randint(1, 1e9), which Python 3.11
# deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
  'ignore:non-integer arguments to randrange:DeprecationWarning'
)


def _trained_model(seed=0, **kwargs):
  """A built tiny model whose weights are all random (not the initial ones)."""
  model = segresnet.SegResNet(**{**_TINY, **kwargs})
  model(tf.zeros([1, 2, 2, 2, 4]))
  rng = np.random.default_rng(seed)
  model.set_weights([rng.normal(size=w.shape) for w in model.get_weights()])
  return model


def _x():
  return tf.constant(
    np.random.default_rng(1).normal(size=(2, 8, 8, 8, 4)), tf.float32
  )


def _edit_config(folder, edit):
  path = os.path.join(folder, model_io.CONFIG_FILE)
  with open(path) as f:
    manifest = json.load(f)
  edit(manifest)
  with open(path, 'w') as f:
    json.dump(manifest, f)
  return path


def test_round_trip_gives_identical_outputs(tmp_path):
  model = _trained_model(dropout_rate=0.1, norm_epsilon=1e-4)
  folder = str(tmp_path / 'model')
  model_io.save_model(model, folder)
  assert sorted(os.listdir(tmp_path)) == ['model']  # no temporary left over
  assert {'config.json', 'weights.index'} <= set(os.listdir(folder))
  with open(os.path.join(folder, 'config.json')) as f:
    manifest = json.load(f)
  assert manifest['format_version'] == 1
  assert manifest['model'] == 'SegResNet'
  assert manifest['config'] == model.get_config()
  assert manifest['weights'] == 'weights'
  loaded = model_io.load_model(folder)
  assert loaded.get_config() == model.get_config()
  np.testing.assert_array_equal(loaded(_x()).numpy(), model(_x()).numpy())
  for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
    np.testing.assert_array_equal(a, b)


def test_plain_keras_reads_the_weights(tmp_path):
  model = _trained_model()
  folder = str(tmp_path / 'model')
  model_io.save_model(model, folder)
  other = segresnet.SegResNet(**_TINY)
  other(tf.zeros([1, 2, 2, 2, 4]))
  other.load_weights(os.path.join(folder, 'weights')).assert_consumed()
  np.testing.assert_array_equal(other(_x()).numpy(), model(_x()).numpy())


def test_moved_folder_still_loads(tmp_path):
  model = _trained_model()
  model_io.save_model(model, str(tmp_path / 'a'))
  os.rename(tmp_path / 'a', tmp_path / 'b')
  loaded = model_io.load_model(str(tmp_path / 'b'))
  np.testing.assert_array_equal(loaded(_x()).numpy(), model(_x()).numpy())


def test_existing_folder_needs_overwrite(tmp_path):
  folder = str(tmp_path / 'model')
  model_io.save_model(_trained_model(seed=0), folder)
  second = _trained_model(seed=1)
  with pytest.raises(FileExistsError, match='model exists and is not empty'):
    model_io.save_model(second, folder)
  model_io.save_model(second, folder, overwrite=True)
  loaded = model_io.load_model(folder)
  np.testing.assert_array_equal(loaded(_x()).numpy(), second(_x()).numpy())
  assert sorted(os.listdir(tmp_path)) == ['model']


def test_save_rejects_unbuilt_and_foreign_models(tmp_path):
  with pytest.raises(ValueError, match='must be built'):
    model_io.save_model(segresnet.SegResNet(**_TINY), str(tmp_path / 'm'))
  with pytest.raises(TypeError, match='must be a SegResNet. Found Sequential'):
    model_io.save_model(tf.keras.Sequential(), str(tmp_path / 'm'))
  assert not os.listdir(tmp_path)


def test_missing_folder_and_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    model_io.load_model(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match=r'empty/config\.json is missing'):
    model_io.load_model(str(tmp_path / 'empty'))
  folder = str(tmp_path / 'model')
  model_io.save_model(_trained_model(), folder)
  os.remove(os.path.join(folder, 'weights.index'))
  with pytest.raises(
    FileNotFoundError, match=r'weights\.index is missing \(field "weights"'
  ):
    model_io.load_model(folder)


def test_malformed_json(tmp_path):
  folder = tmp_path / 'model'
  model_io.save_model(_trained_model(), str(folder))
  (folder / 'config.json').write_text('{"format_version": 1,')
  with pytest.raises(ValueError, match=r'config\.json is not valid JSON'):
    model_io.load_model(str(folder))
  (folder / 'config.json').write_text('[1, 2]')
  with pytest.raises(ValueError, match=r'must hold a JSON object\. Found list'):
    model_io.load_model(str(folder))


@pytest.mark.parametrize(
  'edit,message',
  [
    (lambda m: m.pop('config'), r'field "config" is missing'),
    (lambda m: m.pop('format_version'), r'field "format_version" is missing'),
    (
      lambda m: m.update(format_version=2),
      r'field "format_version" is 2, from a newer tff_brats; the installed '
      r'tff_brats .* reads version 1\. Upgrade tff_brats',
    ),
    (
      lambda m: m.update(format_version=0),
      r'field "format_version" must be 1\. Found 0\.',
    ),
    (
      lambda m: m.update(format_version='1'),
      r'field "format_version" must be a int\. Found \'1\'\.',
    ),
    (
      lambda m: m.update(model='UNet'),
      r'field "model" must be \'SegResNet\'\. Found \'UNet\'\.',
    ),
    (
      lambda m: m.update(config=[4, 3]),
      r'field "config" must be a dict\. Found \[4, 3\]\.',
    ),
    (
      lambda m: m['config'].update(init_filters=0),
      r'field "config" is invalid: init_filters must be a positive integer\. '
      r'Found 0\.',
    ),
    (
      lambda m: m['config'].update(kernel_size=3),
      r'field "config" is invalid: .*kernel_size',
    ),
    (
      lambda m: m.update(weights='/etc/weights'),
      r'field "weights" must be a file name prefix inside the folder',
    ),
  ],
)
def test_bad_config_fields_are_named(tmp_path, edit, message):
  folder = str(tmp_path / 'model')
  model_io.save_model(_trained_model(), folder)
  path = _edit_config(folder, edit)
  with pytest.raises(ValueError, match=message) as error:
    model_io.load_model(folder)
  assert path in str(error.value)


def test_weights_of_another_architecture_do_not_load(tmp_path):
  folder = str(tmp_path / 'model')
  model_io.save_model(_trained_model(), folder)
  # Same layers, wider: every kernel has the wrong shape.
  _edit_config(folder, lambda m: m['config'].update(init_filters=8))
  with pytest.raises(ValueError, match='do not fit the model'):
    model_io.load_model(folder)
  # One more residual block than saved: its variables are not in the file.
  _edit_config(
    folder,
    lambda m: m['config'].update(init_filters=4, blocks_down=[1, 3]),
  )
  with pytest.raises(ValueError, match='do not fit the model'):
    model_io.load_model(folder)


# The training record (what inference must match).


def test_training_record_round_trip(tmp_path):
  folder = str(tmp_path / 'model')
  record = training_metadata.TrainingMetadata((48, 48, 32), 2)
  model_io.save_model(_trained_model(), folder, training=record)
  with open(os.path.join(folder, 'config.json')) as f:
    manifest = json.load(f)
  assert manifest['training'] == {'crop_size': [48, 48, 32], 'crop_margin': 2}
  assert model_io.read_training_metadata(folder) == record
  model_io.load_model(folder)  # the record does not disturb loading


def test_folder_without_training_record_loads_and_records_nothing(tmp_path):
  # Folders written before the record existed have no "training" field.
  folder = str(tmp_path / 'model')
  model = _trained_model()
  model_io.save_model(model, folder)
  with open(os.path.join(folder, 'config.json')) as f:
    assert 'training' not in json.load(f)
  assert model_io.read_training_metadata(folder) is None
  loaded = model_io.load_model(folder)
  np.testing.assert_array_equal(loaded(_x()).numpy(), model(_x()).numpy())


def test_bad_training_record(tmp_path):
  with pytest.raises(TypeError, match='training must be a TrainingMetadata'):
    model_io.save_model(
      _trained_model(), str(tmp_path / 'm'), training={'crop_size': [8] * 3}
    )
  assert not os.listdir(tmp_path)
  folder = str(tmp_path / 'model')
  model_io.save_model(_trained_model(), folder)
  path = _edit_config(folder, lambda m: m.update(training={'crop_size': [8]}))
  with pytest.raises(
    ValueError, match=r'field "training" is invalid: crop_size must be 3'
  ) as error:
    model_io.read_training_metadata(folder)
  assert path in str(error.value)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    model_io.read_training_metadata(str(tmp_path / 'nowhere'))


def test_load_weights_into_a_model_with_frozen_parts(tmp_path):
  source = _trained_model(seed=4)
  model_io.save_model(source, str(tmp_path / 'm'))
  target = segresnet.SegResNet(**{**_TINY, 'dropout_rate': 0.0})
  target(tf.zeros([1, 2, 2, 2, 4]))
  segresnet.freeze_all_but(target, ['head'])
  model_io.load_weights_into(target, str(tmp_path / 'm'))

  # Freezing reorders `weights` (trainable first); by name (without the
  # model's own scope) they agree.
  def name(variable):
    return variable.name.split('/', 1)[1]

  want = {name(v): v.numpy() for v in source.weights}
  assert len(want) == len(target.weights)
  for variable in target.weights:
    np.testing.assert_array_equal(variable.numpy(), want[name(variable)])
  np.testing.assert_allclose(target(_x()), source(_x()), atol=1e-6)


@pytest.mark.parametrize(
  'kwargs, field',
  [
    (dict(init_filters=8), 'init_filters'),
    (dict(blocks_down=(1, 1)), 'blocks_down'),
    (dict(blocks_up=(2,)), 'blocks_up'),
  ],
)
def test_load_weights_into_another_architecture_names_the_field(
  tmp_path, kwargs, field
):
  model_io.save_model(_trained_model(), str(tmp_path / 'm'))
  other = segresnet.SegResNet(**{**_TINY, **kwargs})
  other(tf.zeros([1, 2, 2, 2, 4]))
  with pytest.raises(ValueError, match=rf'field "config\.{field}" is'):
    model_io.load_weights_into(other, str(tmp_path / 'm'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    model_io.load_weights_into(other, str(tmp_path / 'missing'))
