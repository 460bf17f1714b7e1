"""Any saved form of a trained model, as a Keras `SegResNet` again.

A run leaves its model in three forms, and each can start a new run
(`--initial_model`) or be loaded back:

* a model folder (`final_model/`, `best_model/`; `models.model_io`);
* a Keras-native file (`exported_model.keras`; `model_io.save_keras`);
* an exported SavedModel (`exported_model/`; `inference.export`), whose
  metadata records the architecture and whose `model_variables` are the
  model's variables in order.

`kind_of` tells them apart, `load_model` rebuilds the model with its
training record, and `load_weights_into` copies the weights into a model
built for a run, after checking that the architectures agree.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from tff_brats.inference import export
from tff_brats.models import model_io
from tff_brats.models import segresnet
from tff_brats.models import training_metadata

MODEL_FOLDER = 'model_io'
KERAS_FILE = 'keras'
SAVED_MODEL = 'saved_model'
KINDS = (MODEL_FOLDER, KERAS_FILE, SAVED_MODEL)

_EXPECTED = (
  'a model folder (with config.json), a .keras file or an exported '
  'SavedModel folder (with saved_model.pb)'
)


def kind_of(path: str) -> str:
  """One of `KINDS`, by what `path` is.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: It is none of the three.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'model {path} does not exist (expected {_EXPECTED}).'
    )
  if os.path.isfile(path):
    if model_io.is_keras_file(path):
      return KERAS_FILE
    raise ValueError(f'model must be {_EXPECTED}. Found the file {path!r}.')
  if export.is_exported_saved_model(path):
    return SAVED_MODEL
  if os.path.isfile(os.path.join(path, model_io.CONFIG_FILE)):
    return MODEL_FOLDER
  raise ValueError(
    f'model must be {_EXPECTED}. Found the folder {path!r} holding '
    f'{sorted(os.listdir(path))[:5]}.'
  )


def architecture(path: str) -> dict[str, Any]:
  """The `SegResNet` config saved at `path` (no weights are read).

  Raises:
    FileNotFoundError, ValueError: As `kind_of`, or a malformed file; a
      SavedModel exported before its metadata recorded the architecture.
  """
  kind = kind_of(path)
  if kind == MODEL_FOLDER:
    return model_io.read_config(path)
  if kind == KERAS_FILE:
    return model_io.load_keras(path).get_config()
  metadata = export.read_metadata(path) or {}
  config = metadata.get('model_config')
  if not isinstance(config, dict):
    raise ValueError(
      f'{os.path.join(path, export.METADATA_PATH)}: field "model_config" '
      'must describe the SegResNet (exports by tff_brats 0.1.0 of '
      f'2026-12-06 and later record it). Found {config!r}; start from the '
      'model folder the export was made from instead.'
    )
  return config


def check_architecture(path: str, config: dict[str, Any]) -> None:
  """Checks that `path` holds the architecture `config` (SegResNet kwargs).

  Raises:
    ValueError: Another architecture (naming the path, the field and both
      values), or as `architecture`.
  """
  if kind_of(path) == MODEL_FOLDER:  # its errors name config.json
    model_io.check_architecture(path, config)
    return
  saved = architecture(path)
  defaults = segresnet.SegResNet.architecture_defaults()
  for field in model_io.ARCHITECTURE_FIELDS:
    theirs = _plain(saved.get(field, defaults[field]))
    mine = _plain(config.get(field, defaults[field]))
    if theirs != mine:
      raise ValueError(
        f'{path}: field "config.{field}" is {theirs!r}, but the model to '
        f'start from it has {mine!r} (the same architecture is needed).'
      )


def load_model(
  path: str,
) -> tuple[segresnet.SegResNet, training_metadata.TrainingMetadata | None]:
  """The model saved at `path` (any kind) and its training record.

  Raises:
    FileNotFoundError, ValueError: See `kind_of` and `architecture`.
  """
  kind = kind_of(path)
  if kind == MODEL_FOLDER:
    return model_io.load_model(path), model_io.read_training_metadata(path)
  if kind == KERAS_FILE:
    return (
      model_io.load_keras(path),
      model_io.read_keras_training_metadata(path),
    )
  model = segresnet.SegResNet.from_config(architecture(path))
  size = model.size_multiple
  model(tf.zeros([1, size, size, size, model.in_channels]))
  _assign_saved_model_variables(model, path)
  return model, export.read_training_metadata(path)


def load_weights_into(model: segresnet.SegResNet, path: str) -> None:
  """Copies the weights saved at `path` (any kind) into a built `model`.

  Raises:
    TypeError: `model` is not a built `SegResNet`.
    FileNotFoundError, ValueError: See `check_architecture`.
  """
  if not isinstance(model, segresnet.SegResNet) or not model.built:
    raise TypeError(
      f'model must be a built SegResNet. Found {type(model).__name__}.'
    )
  kind = kind_of(path)
  if kind == MODEL_FOLDER:
    model_io.load_weights_into(model, path)
    return
  check_architecture(path, model.get_config())
  if kind == KERAS_FILE:
    saved = model_io.load_keras(path)
    for variable, value in zip(model.variables, saved.variables, strict=True):
      variable.assign(value)
    return
  _assign_saved_model_variables(model, path)


def _assign_saved_model_variables(
  model: segresnet.SegResNet, path: str
) -> None:
  loaded = tf.saved_model.load(path)
  saved = list(getattr(loaded, 'model_variables', []))
  if len(saved) != len(model.variables) or any(
    tuple(a.shape) != tuple(b.shape)
    for a, b in zip(model.variables, saved, strict=True)
  ):
    raise ValueError(
      f'{path}: its {len(saved)} model_variables do not fit the '
      f'{len(model.variables)} variables of the SegResNet its metadata '
      'describes.'
    )
  for variable, value in zip(model.variables, saved, strict=True):
    variable.assign(value)


def _plain(value: Any) -> Any:
  return tuple(value) if isinstance(value, list | tuple) else value
