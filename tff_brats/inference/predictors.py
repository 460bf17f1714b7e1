"""Networks as functions of normalised windows, from wherever they are saved.

A `Predictor` maps a float32 batch of normalised windows `[B, d, h, w, 4]`
to probabilities `[B, d, h, w, 3]` (TC, WT, ET), and knows what inference
must match: the window sizes the network accepts (`size_multiple`) and the
training record (`training`: training crop and crop margin, see
`tff_brats.models.training_metadata`) when the saved model has one.

Three sources: a Keras model in memory (`from_keras_model`), a
`tff_brats.models.model_io` folder (`from_model_dir`) and a SavedModel
exported by `tff_brats.inference.export` or any SavedModel with one input
and one output (`from_saved_model`). `load_predictor` accepts either
folder and tells them apart by their files (`model_kind`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import os
from typing import Any

import numpy as np
import tensorflow as tf

from tff_brats.inference import export
from tff_brats.models import model_io
from tff_brats.models import training_metadata
from tff_brats.utils import checks

MODEL_IO_CONFIG = model_io.CONFIG_FILE
SOURCES = ('keras', 'model_io', 'saved_model', 'function')


class Predictor:
  """A network as a function of normalised windows.

  Calling it maps a float32 batch `[B, d, h, w, 4]`, normalised as by
  `pipeline.normalize_intensity`, to float32 `[B, d, h, w, 3]` (TC, WT, ET)
  probabilities (a numpy array).

  Attributes:
    source: What the network was built from ('keras', 'model_io',
      'saved_model' or 'function').
    path: The folder it was loaded from, or None.
    size_multiple: Every window size must be a multiple of this (1 when
      unknown).
    training: What inference must match of the network's training (the
      training crop and the prepared data's crop margin), or None when the
      saved model records nothing.
  """

  def __init__(
    self,
    predict_fn: Callable[[np.ndarray], Any],
    *,
    source: str = 'function',
    path: str | None = None,
    size_multiple: int = 1,
    training: training_metadata.TrainingMetadata | None = None,
    owner: Any = None,
  ):
    """Wraps `predict_fn`.

    Args:
      predict_fn: Batch of windows to probabilities (numpy or tensor).
      source: See the class attributes.
      path: See the class attributes.
      size_multiple: See the class attributes.
      training: See the class attributes.
      owner: An object to keep alive as long as the predictor (a loaded
        SavedModel owns the variables its signature functions read).
    """
    checks.check_one_of('source', source, SOURCES)
    checks.check_positive_int('size_multiple', size_multiple)
    if training is not None and not isinstance(
      training, training_metadata.TrainingMetadata
    ):
      raise ValueError(
        'training must be a TrainingMetadata or None. Found '
        f'{type(training).__name__}.'
      )
    self._predict_fn = predict_fn
    self._owner = owner
    self.source = source
    self.path = path
    self.size_multiple = int(size_multiple)
    self.training = training

  def __call__(self, batch: np.ndarray) -> np.ndarray:
    output = self._predict_fn(np.asarray(batch, np.float32))
    return np.asarray(output, np.float32)

  def __repr__(self) -> str:
    where = f', path={self.path!r}' if self.path else ''
    return f'Predictor(source={self.source!r}{where})'


def from_keras_model(
  model: tf.keras.Model,
  *,
  size_multiple: int | None = None,
  training: training_metadata.TrainingMetadata | None = None,
) -> Predictor:
  """A predictor calling `model(x, training=False)` in a `tf.function`.

  Args:
    model: Maps `[B, d, h, w, 4]` to `[B, d, h, w, 3]` probabilities.
    size_multiple: Default `model.size_multiple` if it has one, else 1.
    training: The model's training record, if known.
  """
  if size_multiple is None:
    size_multiple = getattr(model, 'size_multiple', 1)

  @tf.function(reduce_retracing=True)
  def predict(batch):
    return tf.cast(model(batch, training=False), tf.float32)

  return Predictor(
    lambda batch: predict(tf.constant(batch)).numpy(),
    source='keras',
    size_multiple=size_multiple,
    training=training,
  )


def from_model_dir(path: str) -> Predictor:
  """A predictor from a `tff_brats.models.model_io` folder.

  Raises:
    ValueError: `path` is not a loadable model folder, or its training
      record is malformed.
  """
  path = os.path.abspath(os.fspath(path))
  model = export.load_model_dir(path)
  try:
    training = model_io.read_training_metadata(path)
  except (OSError, ValueError) as e:
    raise ValueError(
      f'model_dir must be a loadable model_io folder. Found {path!r}: {e}'
    ) from e
  predictor = from_keras_model(model, training=training)
  predictor.source, predictor.path = 'model_io', path
  return predictor


def from_keras_file(path: str) -> Predictor:
  """A predictor from a Keras-native `.keras` file (`model_io.save_keras`).

  Raises:
    ValueError: `path` is not a loadable `.keras` file of a SegResNet, or
      its training record is malformed.
  """
  path = os.path.abspath(os.fspath(path))
  try:
    model = model_io.load_keras(path)
    training = model_io.read_keras_training_metadata(path)
  except (OSError, ValueError) as e:
    raise ValueError(f'model must be a loadable .keras file: {e}') from e
  predictor = from_keras_model(model, training=training)
  predictor.source, predictor.path = 'keras', path
  return predictor


def from_saved_model(path: str) -> Predictor:
  """A predictor from a SavedModel's `serving_default` signature.

  A SavedModel written by `tff_brats.inference.export` has an input `image`
  and an output `probabilities`, and its metadata gives the size multiple
  and the training record; any other SavedModel whose serving signature has
  exactly one input and one output works too (size multiple 1, no record).

  Args:
    path: The SavedModel folder.

  Raises:
    ValueError: `path` is not a SavedModel or has no usable signature.
  """
  path = os.path.abspath(os.fspath(path))
  if not export.is_exported_saved_model(path):
    raise ValueError(
      f'model must be a SavedModel folder (with {export.SAVED_MODEL_FILE}). '
      f'Found {path!r}.'
    )
  metadata = export.read_metadata(path) or {}
  training = export.read_training_metadata(path)
  try:
    loaded = tf.saved_model.load(path)
  except Exception as e:  # Any failure here means "not a loadable model".
    raise ValueError(
      f'model must be a loadable SavedModel. Found {path!r}: '
      f'{str(e).splitlines()[0] if str(e) else type(e).__name__}'
    ) from e
  signatures = dict(loaded.signatures)
  if export.SERVING_SIGNATURE not in signatures:
    raise ValueError(
      f'model must have a {export.SERVING_SIGNATURE!r} signature. Found '
      f'{sorted(signatures)} in {path!r}.'
    )
  function = signatures[export.SERVING_SIGNATURE]
  input_name = _only_or(
    function.structured_input_signature[1], export.INPUT_NAME, 'input', path
  )
  output_name = _only_or(
    function.structured_outputs, export.OUTPUT_NAME, 'output', path
  )

  def predict(batch):
    outputs = function(**{input_name: tf.constant(batch, tf.float32)})
    return outputs[output_name].numpy()

  return Predictor(
    predict,
    source='saved_model',
    path=path,
    size_multiple=int(metadata.get('size_multiple', 1)),
    training=training,
    owner=loaded,
  )


def model_kind(path: str) -> str:
  """'saved_model', 'model_io' or 'keras', by what `path` is.

  Raises:
    ValueError: `path` does not exist or is none of the three.
  """
  path = os.path.abspath(os.fspath(path))
  expected = (
    f'an exported SavedModel folder (with {export.SAVED_MODEL_FILE}), a '
    f'model_io folder (with {MODEL_IO_CONFIG}) or a .keras file'
  )
  if not os.path.exists(path):
    raise ValueError(
      f'model must be {expected}. Found {path!r}, which does not exist.'
    )
  if not os.path.isdir(path):
    if model_io.is_keras_file(path):
      return 'keras'
    raise ValueError(f'model must be {expected}. Found a file {path!r}.')
  if export.is_exported_saved_model(path):
    return 'saved_model'
  if os.path.isfile(os.path.join(path, MODEL_IO_CONFIG)):
    return 'model_io'
  found = sorted(os.listdir(path))
  shown = ', '.join(found[:5]) + (', ...' if len(found) > 5 else '')
  raise ValueError(
    f'model must be {expected}. Found {path!r} holding {shown or "nothing"}.'
  )


def load_predictor(path: str) -> Predictor:
  """A predictor from an exported SavedModel, a `model_io` folder or a
  `.keras` file.

  Raises:
    ValueError: See `model_kind`, `from_saved_model`, `from_model_dir`.
  """
  kind = model_kind(path)
  if kind == 'saved_model':
    return from_saved_model(path)
  if kind == 'keras':
    return from_keras_file(path)
  return from_model_dir(path)


def _only_or(
  specs: Mapping[str, Any], preferred: str, what: str, path: str
) -> str:
  """The name `preferred` if the signature has it, else its only name."""
  if preferred in specs:
    return preferred
  if len(specs) == 1:
    return next(iter(specs))
  raise ValueError(
    f'model signature {export.SERVING_SIGNATURE!r} must have an {what} '
    f'named {preferred!r} or exactly one {what}. Found {sorted(specs)} in '
    f'{path!r}.'
  )
