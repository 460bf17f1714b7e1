"""Saving and loading a `SegResNet` as a folder: architecture + weights.

A model folder holds

    config.json         {"format_version": 1, "model": "SegResNet",
                         "config": <SegResNet.get_config()>,
                         "weights": "weights", "tensorflow_version": ...,
                         "training": {"crop_size": [d, h, w],
                                      "crop_margin": m}}
    weights.index       the weights as a TensorFlow checkpoint (what
    weights.data-*      `tf.keras.Model.save_weights(..., save_format='tf')`
                        writes and plain Keras 2 `load_weights` reads)
    checkpoint          Keras' checkpoint-state file (relative path)

`training` (optional: folders written without it load, and record nothing)
is the `training_metadata.TrainingMetadata` inference must match: the
training crop, inference's default sliding window, and the prepared data's
crop margin.

The checkpoint matches variables by their place in the model (not by the
order of layers, as HDF5 files do), so a wrong architecture fails loudly.
The folder is written under a temporary sibling name and renamed when
complete (`tff_brats.utils.atomic.staged_directory`).

A Keras-native file, `<name>.keras` (`save_keras`), holds the same model in
Keras's own format: `tf.keras.models.load_model(path)` returns a working
`SegResNet` once `tff_brats` is imported (every layer is registered as
serialisable under the package name `tff_brats`), with `predict`,
`summary` and `fit`. The archive also carries `tff_brats.json` (this
module's format version and the training record), which Keras ignores and
`read_keras_training_metadata` reads.
"""

from __future__ import annotations

import json
import os
from typing import Any
import zipfile

import tensorflow as tf

from tff_brats.models import segresnet
from tff_brats.models import training_metadata
from tff_brats.utils import atomic

FORMAT_VERSION = 1
CONFIG_FILE = 'config.json'
KERAS_EXTENSION = '.keras'
# The archive entry of a `.keras` file that holds this module's record.
KERAS_RECORD = 'tff_brats.json'
WEIGHTS_PREFIX = 'weights'
MODEL_NAME = 'SegResNet'


def save_model(
  model: segresnet.SegResNet,
  path: str,
  *,
  overwrite: bool = False,
  training: training_metadata.TrainingMetadata | None = None,
) -> None:
  """Writes `model` (architecture and weights) to the folder `path`.

  Args:
    model: A built `SegResNet` (called at least once).
    path: The folder to create.
    overwrite: Whether an existing non-empty folder may be replaced (only
      once the new one is complete).
    training: What inference must match of the model's training (e.g.
      `TrainingMetadata.for_prepared(prepared, crop_size)`); None records
      nothing.

  Raises:
    TypeError: `model` is not a `SegResNet`, or `training` is not a
      `TrainingMetadata`.
    ValueError: `model` has no weights yet.
    FileExistsError: `path` exists, is not empty and `overwrite` is False.
  """
  _check_saveable(model, training)
  manifest = {
    'format_version': FORMAT_VERSION,
    'model': MODEL_NAME,
    'config': model.get_config(),
    'weights': WEIGHTS_PREFIX,
    'tensorflow_version': tf.__version__,
  }
  if training is not None:
    manifest[training_metadata.JSON_KEY] = training.to_json()
  with atomic.staged_directory(path, replace=overwrite) as tmp:
    model.save_weights(os.path.join(tmp, WEIGHTS_PREFIX), save_format='tf')
    with open(os.path.join(tmp, CONFIG_FILE), 'w') as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
      f.write('\n')


def save_keras(
  model: segresnet.SegResNet,
  path: str,
  *,
  overwrite: bool = False,
  training: training_metadata.TrainingMetadata | None = None,
) -> str:
  """Writes `model` as a Keras-native `.keras` file (see the module doc).

  Args:
    model: A built `SegResNet`.
    path: The file to write; must end in '.keras'.
    overwrite: Whether an existing file may be replaced.
    training: The training record to keep with it (None: none).

  Returns:
    The absolute `path`.

  Raises:
    TypeError: `model` is not a `SegResNet`, or `training` is not a
      `TrainingMetadata`.
    ValueError: `model` has no weights yet, or `path` is not a `.keras`.
    FileExistsError: `path` exists and `overwrite` is False.
  """
  _check_saveable(model, training)
  path = os.path.abspath(os.fspath(path))
  if not path.endswith(KERAS_EXTENSION):
    raise ValueError(f"path must end in '{KERAS_EXTENSION}'. Found {path!r}.")
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(
      f'{path} exists; pass overwrite=True (--overwrite) to replace it.'
    )
  record = {
    'format_version': FORMAT_VERSION,
    'model': MODEL_NAME,
    'tensorflow_version': tf.__version__,
    training_metadata.JSON_KEY: None
    if training is None
    else training.to_json(),
  }
  with atomic.staged_file(path) as tmp:
    model.save(tmp, save_format='keras')
    with zipfile.ZipFile(tmp, 'a') as archive:
      archive.writestr(KERAS_RECORD, json.dumps(record, indent=1) + '\n')
  return path


def _check_saveable(model: Any, training: Any) -> None:
  if not isinstance(model, segresnet.SegResNet):
    raise TypeError(f'model must be a SegResNet. Found {type(model).__name__}.')
  if not model.built or not model.weights:
    raise ValueError(
      'model must be built (called once) before saving. Found no weights.'
    )
  if training is not None and not isinstance(
    training, training_metadata.TrainingMetadata
  ):
    raise TypeError(
      'training must be a TrainingMetadata or None. Found '
      f'{type(training).__name__}.'
    )


def is_keras_file(path: str) -> bool:
  """Whether `path` names a `.keras` file (by its extension)."""
  return os.fspath(path).endswith(KERAS_EXTENSION)


def load_keras(path: str) -> segresnet.SegResNet:
  """Loads a `.keras` file written by `save_keras` (Keras's own loader).

  Raises:
    FileNotFoundError: `path` is missing.
    ValueError: It is not a Keras archive of a `SegResNet`, or it comes
      from a newer tff_brats (the message says to upgrade).
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Keras file {path} does not exist.')
  _read_keras_record(path)  # a newer format stops here, before Keras
  try:
    model = tf.keras.models.load_model(path, compile=False)
  except (OSError, TypeError, ValueError, KeyError) as e:
    raise ValueError(f'{path} must be a loadable .keras file: {e}') from e
  if not isinstance(model, segresnet.SegResNet):
    raise ValueError(
      f'{path} must hold a SegResNet. Found a {type(model).__name__}.'
    )
  return model


def read_keras_training_metadata(
  path: str,
) -> training_metadata.TrainingMetadata | None:
  """The training record of a `.keras` file, or None if it has none."""
  record = _read_keras_record(path)
  if record is None or record.get(training_metadata.JSON_KEY) is None:
    return None
  return training_metadata.TrainingMetadata.from_json(
    record[training_metadata.JSON_KEY], where=f'{path}:{KERAS_RECORD}'
  )


def _read_keras_record(path: str) -> dict[str, Any] | None:
  """`tff_brats.json` of a `.keras` archive (None if a plain Keras file)."""
  where = f'{path}:{KERAS_RECORD}'
  try:
    with zipfile.ZipFile(path) as archive:
      if KERAS_RECORD not in archive.namelist():
        return None
      record = json.loads(archive.read(KERAS_RECORD))
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(
      f'{path} must be a .keras archive (a zip file): {e}'
    ) from e
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{where} is not valid JSON: {e}') from e
  version = record.get('format_version') if isinstance(record, dict) else None
  if not isinstance(version, int) or isinstance(version, bool):
    raise ValueError(
      f'{where}: field "format_version" must be an int. Found {version!r}.'
    )
  if version > FORMAT_VERSION:
    import tff_brats

    raise ValueError(
      f'{where}: field "format_version" is {version}, from a newer '
      f'tff_brats; the installed tff_brats {tff_brats.__version__} reads '
      f'version {FORMAT_VERSION}. Upgrade tff_brats to load it.'
    )
  return record


def load_model(path: str) -> segresnet.SegResNet:
  """Rebuilds the model saved in the folder `path` and restores its weights.

  The model is constructed under the current global Keras policy (see
  `tff_brats.models.precision`); its variables are float32 either way.

  Raises:
    FileNotFoundError: `path`, its config.json or its weights are missing.
    ValueError: config.json is malformed (naming the file and the field),
      or the weights do not fit the architecture.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Model folder {path} does not exist.')
  config_path = os.path.join(path, CONFIG_FILE)
  manifest = _read_manifest(config_path)
  try:
    model = segresnet.SegResNet.from_config(manifest['config'])
  except (TypeError, ValueError) as e:
    raise ValueError(f'{config_path}: field "config" is invalid: {e}') from e
  size = model.size_multiple
  model(tf.zeros([1, size, size, size, model.in_channels]))
  _restore_weights(model, path, manifest)
  return model


# The config fields that fix a SegResNet's weights (their shapes and
# placement); the others (dropout, GroupNorm's epsilon, name) may differ
# between a model folder and the model its weights are loaded into.
ARCHITECTURE_FIELDS = (
  'in_channels',
  'out_channels',
  'init_filters',
  'blocks_down',
  'blocks_up',
  'norm_groups',
)


def read_config(path: str) -> dict[str, Any]:
  """The `SegResNet` config of the model folder `path` (no weights read).

  Raises:
    FileNotFoundError: `path` or its config.json is missing.
    ValueError: config.json is malformed (naming the file and the field).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Model folder {path} does not exist.')
  return _read_manifest(os.path.join(path, CONFIG_FILE))['config']


def check_architecture(path: str, config: dict[str, Any]) -> dict[str, Any]:
  """Checks that the model folder `path` holds the architecture `config`.

  Args:
    path: A model folder.
    config: `SegResNet` keyword arguments (missing `ARCHITECTURE_FIELDS`
      take SegResNet's defaults).

  Returns:
    The folder's config.json content.

  Raises:
    FileNotFoundError: `path` or its config.json is missing.
    ValueError: config.json is malformed or describes another
      architecture (naming the file, the field and both values).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Model folder {path} does not exist.')
  config_path = os.path.join(path, CONFIG_FILE)
  manifest = _read_manifest(config_path)
  defaults = segresnet.SegResNet.architecture_defaults()
  for field in ARCHITECTURE_FIELDS:
    theirs = _plain(manifest['config'].get(field, defaults[field]))
    mine = _plain(config.get(field, defaults[field]))
    if theirs != mine:
      raise ValueError(
        f'{config_path}: field "config.{field}" is {theirs!r}, but the model '
        f'to start from it has {mine!r} (the same architecture is needed).'
      )
  return manifest


def _plain(value: Any) -> Any:
  return tuple(value) if isinstance(value, list | tuple) else value


def load_weights_into(model: segresnet.SegResNet, path: str) -> None:
  """Restores the weights of the model folder `path` into a built `model`.

  For starting a run from a trained model (`--initial_model`): the folder's
  architecture must be `model`'s (the `ARCHITECTURE_FIELDS` of both
  configs); which weights `model` trains (frozen parts) does not matter,
  as the checkpoint matches variables by their place in the model.

  Raises:
    FileNotFoundError: `path`, its config.json or its weights are missing.
    ValueError: config.json is malformed, or describes another
      architecture (naming the file, the field and both values).
  """
  if not isinstance(model, segresnet.SegResNet) or not model.built:
    raise TypeError(
      f'model must be a built SegResNet. Found {type(model).__name__}.'
    )
  manifest = check_architecture(path, model.get_config())
  _restore_weights(model, path, manifest)


def _restore_weights(
  model: segresnet.SegResNet, path: str, manifest: dict[str, Any]
) -> None:
  """Loads the folder's weights into the built `model`; errors name them."""
  config_path = os.path.join(path, CONFIG_FILE)
  prefix = os.path.join(path, manifest['weights'])
  if not tf.io.gfile.exists(prefix + '.index'):
    raise FileNotFoundError(
      f'{path} has no weights: {prefix}.index is missing '
      f'(field "weights" of {config_path}).'
    )
  try:
    model.load_weights(
      prefix
    ).assert_existing_objects_matched().expect_partial()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(
      f'The weights {prefix} do not fit the model of {config_path}: {e}'
    ) from e


def read_training_metadata(
  path: str,
) -> training_metadata.TrainingMetadata | None:
  """The training record of the model folder `path`, or None if it has none.

  Raises:
    FileNotFoundError: `path` or its config.json is missing.
    ValueError: config.json is malformed (naming the file and the field).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Model folder {path} does not exist.')
  config_path = os.path.join(path, CONFIG_FILE)
  manifest = _read_manifest(config_path)
  if manifest.get(training_metadata.JSON_KEY) is None:
    return None
  return training_metadata.TrainingMetadata.from_json(
    manifest[training_metadata.JSON_KEY], where=config_path
  )


def _read_manifest(config_path: str) -> dict[str, Any]:
  """Reads and checks config.json; errors name the file and the field."""
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{config_path} is missing.')
  try:
    with open(config_path) as f:
      manifest = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{config_path} is not valid JSON: {e}') from e
  if not isinstance(manifest, dict):
    raise ValueError(
      f'{config_path} must hold a JSON object. Found {type(manifest).__name__}.'
    )
  fields = {
    'format_version': int,
    'model': str,
    'config': dict,
    'weights': str,
  }
  for field, kind in fields.items():
    if field not in manifest:
      raise ValueError(f'{config_path}: field "{field}" is missing.')
    value = manifest[field]
    if not isinstance(value, kind) or isinstance(value, bool):
      raise ValueError(
        f'{config_path}: field "{field}" must be a {kind.__name__}. '
        f'Found {value!r}.'
      )
  if manifest['format_version'] > FORMAT_VERSION:
    import tff_brats

    raise ValueError(
      f'{config_path}: field "format_version" is '
      f'{manifest["format_version"]}, from a newer tff_brats; the installed '
      f'tff_brats {tff_brats.__version__} reads version {FORMAT_VERSION}. '
      'Upgrade tff_brats to load it.'
    )
  if manifest['format_version'] != FORMAT_VERSION:
    raise ValueError(
      f'{config_path}: field "format_version" must be {FORMAT_VERSION}. '
      f'Found {manifest["format_version"]!r}.'
    )
  if manifest['model'] != MODEL_NAME:
    raise ValueError(
      f'{config_path}: field "model" must be {MODEL_NAME!r}. '
      f'Found {manifest["model"]!r}.'
    )
  weights = manifest['weights']
  if not weights or os.path.isabs(weights) or os.sep in weights:
    raise ValueError(
      f'{config_path}: field "weights" must be a file name prefix inside the '
      f'folder. Found {weights!r}.'
    )
  return manifest
