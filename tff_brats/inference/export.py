"""Exports a trained network as a plain TensorFlow SavedModel.

The exported folder loads with `tf.saved_model.load` alone: no `tff_brats`
import and no Keras custom objects (the signatures are traced graphs; only
the model's variables are saved, not its Python layers). Two signatures:

* `serving_default` (the network):
    inputs:  `image` float32 `[batch, D, H, W, 4]`, **already normalised**
             as training normalises (see `normalize` below), modalities in
             the layout's order (T1, T1ce, T2, FLAIR; 2023: t1n, t1c, t2w,
             t2f);
    outputs: `probabilities` float32 `[batch, D, H, W, 3]`, sigmoid
             probabilities of the regions (TC, WT, ET).
  Batch and spatial sizes are dynamic; every spatial size must be a multiple
  of the model's `size_multiple` (8 for the default SegResNet), which
  `assets.extra/export.json` records, together with the model's training
  record when it has one (`training`: the training crop, which is the
  window to slide, and the prepared data's crop margin; see
  `tff_brats.models.training_metadata`).
* `normalize` (the training normalisation, `pipeline.normalize_intensity`,
  traced from the same code):
    inputs:  `image` float32 `[D, H, W, 4]`, one whole case, raw
             intensities;
    outputs: `image` float32 `[D, H, W, 4]`, each modality z-scored over
             the brain (its non-zero voxels), the background exactly 0.

Why normalisation is a separate signature rather than part of
`serving_default`: the z-score statistics are those of the whole case
(brain voxels of the whole volume), while the network runs on windows of
it; a serving function that normalised its own input would normalise each
window with that window's statistics, which is not what the network was
trained on. A consumer normalises the case once with `normalize`, then runs
windows through `serving_default` (as `tff_brats.inference.case_prediction`
does with the very same `pipeline.normalize_intensity`).

Writing is atomic: the SavedModel goes into a temporary sibling folder, is
loaded back and checked against the Keras model on a random input, and only
then renamed into place. An existing folder is replaced only with
`overwrite=True`, and only if it is an exported SavedModel (or empty).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

import tff_brats
from tff_brats.data import layouts
from tff_brats.data import pipeline
from tff_brats.data import records
from tff_brats.models import model_io
from tff_brats.models import segresnet
from tff_brats.models import training_metadata
from tff_brats.utils import atomic
from tff_brats.utils import checks

SERVING_SIGNATURE = 'serving_default'
NORMALIZE_SIGNATURE = 'normalize'
INPUT_NAME = 'image'
OUTPUT_NAME = 'probabilities'
METADATA_PATH = os.path.join('assets.extra', 'export.json')
SAVED_MODEL_FILE = 'saved_model.pb'
FORMAT = 'tff_brats.export/1'
# Largest difference allowed between the Keras model and the reloaded
# SavedModel on the check input (the same graph; only op fusion differs).
_CHECK_ATOL = 1e-5


def export_saved_model(
  model: tf.keras.Model,
  output_dir: str,
  *,
  overwrite: bool = False,
  size_multiple: int | None = None,
  source: str | None = None,
  training: training_metadata.TrainingMetadata | None = None,
) -> str:
  """Writes `model` as a SavedModel with the signatures of the module doc.

  Args:
    model: A Keras model mapping float32 `[B, D, H, W, 4]` to
      `[B, D, H, W, 3]` probabilities; called as `model(x, training=False)`.
    output_dir: The folder to create.
    overwrite: Whether an existing exported folder may be replaced.
    size_multiple: Every spatial input size must be a multiple of this;
      default `model.size_multiple` if the model has one, else 1.
    source: Where the model came from (recorded in the metadata).
    training: What inference must match of the model's training (recorded
      in the metadata; `read_training_metadata` reads it back).

  Returns:
    The absolute path of the exported folder.

  Raises:
    FileExistsError: `output_dir` exists and `overwrite` is False.
    ValueError: `output_dir` is a file or a folder that is not an exported
      SavedModel, `size_multiple` or `training` is bad, or the model does
      not map 4 channels to 3.
  """
  output_dir = os.path.abspath(os.fspath(output_dir))
  _check_output_dir(output_dir, overwrite)
  if training is not None and not isinstance(
    training, training_metadata.TrainingMetadata
  ):
    raise ValueError(
      'training must be a TrainingMetadata or None. Found '
      f'{type(training).__name__}.'
    )
  if size_multiple is None:
    size_multiple = getattr(model, 'size_multiple', 1)
  checks.check_positive_int('size_multiple', size_multiple)
  size_multiple = int(size_multiple)
  # Running the model first builds it (a subclassed model has no variables
  # before its first call) and gives the reference the export must match.
  probe = _probe_input(size_multiple)
  expected = _run_keras(model, probe)
  module = _serving_module(model)
  signatures = {
    SERVING_SIGNATURE: module.serve.get_concrete_function(),
    NORMALIZE_SIGNATURE: module.normalize.get_concrete_function(),
  }
  with atomic.staged_directory(output_dir, replace=overwrite) as tmp:
    tf.saved_model.save(
      module,
      tmp,
      signatures=signatures,
      # With the custom gradient of the model's GroupNorm, so that a
      # SavedModel can be fine-tuned (gradients through `serving_default`
      # with respect to `model_variables`) and loads without TF's warning.
      options=tf.saved_model.SaveOptions(experimental_custom_gradients=True),
    )
    os.makedirs(os.path.join(tmp, os.path.dirname(METADATA_PATH)))
    atomic.write_text(
      os.path.join(tmp, METADATA_PATH),
      json.dumps(
        _metadata(size_multiple, source, training, _model_config(model)),
        indent=1,
      )
      + '\n',
    )
    _check_round_trip(tmp, probe, expected)
  return output_dir


def export_model_dir(
  model_dir: str, output_dir: str, *, overwrite: bool = False
) -> str:
  """Exports a `tff_brats.models.model_io` folder as a SavedModel.

  The folder's training record (if any) is copied into the metadata.

  Args:
    model_dir: A folder written by `model_io.save_model`.
    output_dir: The folder to create.
    overwrite: Whether an existing exported folder may be replaced.

  Returns:
    The absolute path of the exported folder.

  Raises:
    FileExistsError, ValueError: See `export_saved_model`; also a missing
      or unreadable `model_dir`.
  """
  model_dir = os.path.abspath(os.fspath(model_dir))
  if not os.path.isdir(model_dir):
    raise ValueError(
      f'model_dir must be a model folder (model_io). Found {model_dir!r}, '
      f'which {"is not a folder" if os.path.exists(model_dir) else "does not exist"}.'
    )
  # Before loading (which may take long), so a wrong output_dir fails fast.
  _check_output_dir(os.path.abspath(os.fspath(output_dir)), overwrite)
  model = load_model_dir(model_dir)
  training = model_io.read_training_metadata(model_dir)
  return export_saved_model(
    model,
    output_dir,
    overwrite=overwrite,
    source=model_dir,
    training=training,
  )


def export_keras_file(
  model_dir: str, path: str, *, overwrite: bool = False
) -> str:
  """Writes a `model_io` folder as a Keras-native `.keras` file.

  The folder's training record goes with it (`model_io.save_keras`).

  Returns:
    The absolute path of the file.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
    ValueError: A missing or unreadable `model_dir`, or a `path` that does
      not end in '.keras'.
  """
  model = load_model_dir(model_dir)
  training = model_io.read_training_metadata(model_dir)
  return model_io.save_keras(
    model, path, overwrite=overwrite, training=training
  )


def load_model_dir(model_dir: str) -> tf.keras.Model:
  """Loads a `model_io` folder; errors are ValueErrors naming it."""
  try:
    return model_io.load_model(model_dir)
  except (OSError, KeyError, TypeError, ValueError) as e:
    raise ValueError(
      f'model_dir must be a loadable model_io folder. Found {model_dir!r}: {e}'
    ) from e


def is_exported_saved_model(path: str) -> bool:
  """Whether `path` is a folder holding a SavedModel."""
  return os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))


def read_metadata(path: str) -> dict[str, Any] | None:
  """The `export.json` of an exported folder, or None if it has none."""
  metadata_path = os.path.join(path, METADATA_PATH)
  if not os.path.isfile(metadata_path):
    return None
  try:
    with open(metadata_path) as f:
      metadata = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(
      f'export metadata must be readable JSON. Found {metadata_path!r}: {e}'
    ) from e
  if not isinstance(metadata, dict) or metadata.get('format') != FORMAT:
    raise ValueError(
      f'export metadata format must be {FORMAT!r}. Found '
      f'{metadata.get("format") if isinstance(metadata, dict) else metadata!r} '
      f'in {metadata_path!r}.'
    )
  return metadata


def read_training_metadata(
  path: str,
) -> training_metadata.TrainingMetadata | None:
  """The training record in an exported folder's metadata, or None.

  Raises:
    ValueError: Unreadable metadata or a malformed record (naming the file
      and the field).
  """
  metadata = read_metadata(path)
  if metadata is None or metadata.get(training_metadata.JSON_KEY) is None:
    return None
  return training_metadata.TrainingMetadata.from_json(
    metadata[training_metadata.JSON_KEY],
    where=os.path.join(path, METADATA_PATH),
  )


def _serving_module(model: tf.keras.Model) -> tf.Module:
  module = tf.Module()
  # Only the variables are tracked (and saved), not the Keras layers: the
  # SavedModel then restores without the model's Python classes.
  module.model_variables = list(model.variables)

  @tf.function(
    autograph=False,
    input_signature=[
      tf.TensorSpec(
        [None, None, None, None, records.NUM_MODALITIES],
        tf.float32,
        name=INPUT_NAME,
      )
    ],
  )
  def serve(image):
    probabilities = model(image, training=False)
    return {OUTPUT_NAME: tf.cast(probabilities, tf.float32)}

  @tf.function(
    input_signature=[
      tf.TensorSpec(
        [None, None, None, records.NUM_MODALITIES], tf.float32, name=INPUT_NAME
      )
    ]
  )
  def normalize(image):
    return {INPUT_NAME: pipeline.normalize_intensity(image)}

  module.serve = serve
  module.normalize = normalize
  return module


def _probe_input(size_multiple: int) -> np.ndarray:
  size = 2 * size_multiple
  rng = np.random.default_rng(0)
  shape = (1, size, size, size, records.NUM_MODALITIES)
  return rng.normal(size=shape).astype(np.float32)


def _run_keras(model: tf.keras.Model, probe: np.ndarray) -> np.ndarray:
  try:
    output = model(probe, training=False)
  except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
    raise ValueError(
      f'model must accept float32 [batch, D, H, W, {records.NUM_MODALITIES}]. '
      f'Found an error for input shape {probe.shape}: {e}'
    ) from e
  output = np.asarray(output, np.float32)
  if output.shape != (*probe.shape[:4], records.NUM_REGIONS):
    raise ValueError(
      f'model must return [batch, D, H, W, {records.NUM_REGIONS}] '
      f'probabilities (TC, WT, ET). Found shape {output.shape} for input '
      f'{probe.shape}.'
    )
  return output


def _check_round_trip(
  path: str, probe: np.ndarray, expected: np.ndarray
) -> None:
  """Reloads the export and compares it with the Keras model's output."""
  loaded = tf.saved_model.load(path)
  got = loaded.signatures[SERVING_SIGNATURE](image=tf.constant(probe))
  got = got[OUTPUT_NAME].numpy()
  difference = float(np.max(np.abs(got - expected)))
  if not difference <= _CHECK_ATOL:
    raise ValueError(
      f'exported SavedModel must reproduce the Keras model (within '
      f'{_CHECK_ATOL}). Found a largest difference of {difference:.3g}.'
    )


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
  if not os.path.lexists(output_dir):
    return
  if not os.path.isdir(output_dir):
    raise ValueError(
      f'output_dir must be a folder to create. Found {output_dir!r}, which '
      'is a file.'
    )
  if not os.listdir(output_dir):
    return
  if not overwrite:
    raise FileExistsError(
      f'output_dir must not exist unless overwrite=True (--overwrite). '
      f'Found an existing folder {output_dir!r}.'
    )
  if not is_exported_saved_model(output_dir):
    raise ValueError(
      f'output_dir must be an exported SavedModel to be overwritten. Found '
      f'{output_dir!r}, a non-empty folder without {SAVED_MODEL_FILE}; '
      'refusing to replace it.'
    )


def _model_config(model: tf.keras.Model) -> dict[str, Any] | None:
  """A SegResNet's config (to rebuild it from `model_variables`), or None."""
  if isinstance(model, segresnet.SegResNet):
    return model.get_config()
  return None


def _metadata(
  size_multiple: int,
  source: str | None,
  training: training_metadata.TrainingMetadata | None,
  model_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
  return {
    'format': FORMAT,
    'tff_brats_version': tff_brats.__version__,
    'source': source,
    'size_multiple': size_multiple,
    # `model_variables` are the model's variables in this architecture's
    # order: `model_sources` rebuilds the Keras model from them.
    'model_config': model_config,
    training_metadata.JSON_KEY: None
    if training is None
    else training.to_json(),
    'regions': list(layouts.REGIONS),
    'modalities': {
      name: list(layout.modalities) for name, layout in layouts.LAYOUTS.items()
    },
    'signatures': {
      SERVING_SIGNATURE: {
        'inputs': {
          INPUT_NAME: 'float32 [batch, D, H, W, 4], normalised as by the '
          f"'{NORMALIZE_SIGNATURE}' signature; spatial sizes multiples of "
          'size_multiple'
        },
        'outputs': {
          OUTPUT_NAME: 'float32 [batch, D, H, W, 3] probabilities of '
          '(TC, WT, ET)'
        },
      },
      NORMALIZE_SIGNATURE: {
        'inputs': {INPUT_NAME: 'float32 [D, H, W, 4] raw intensities'},
        'outputs': {
          INPUT_NAME: 'float32 [D, H, W, 4], per-modality z-score over the '
          'non-zero voxels of the whole case, background 0'
        },
      },
    },
  }
