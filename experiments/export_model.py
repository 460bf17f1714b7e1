r"""Exports a trained model folder as a SavedModel and a Keras-native file.

Example:

  python -m experiments.export_model --model_dir=/runs/exp1/model \
    --output_dir=/runs/exp1/saved_model
  # also writes /runs/exp1/saved_model.keras (or --keras_output=...)

The SavedModel loads with `tf.saved_model.load` alone (no tff_brats, no
custom objects). Its `serving_default` signature maps normalised volumes
`image` float32 [batch, D, H, W, 4] to `probabilities` float32
[batch, D, H, W, 3] (TC, WT, ET); its `normalize` signature is the training
normalisation of one whole case. See `tff_brats.inference.export`.

The `.keras` file (`--keras_output`, default `<output_dir>.keras`; empty to
skip) loads with `tf.keras.models.load_model` once `tff_brats` is imported:
a working `SegResNet` with `predict`, `summary` and `fit`.

The model folder's training record (training crop and crop margin, written
by the trainers) is copied into the SavedModel's metadata, so predict.py
and evaluate.py use it as their defaults; the binary prints it.

Writing is atomic; an existing output (`--output_dir`, the SavedModel folder
to create) needs `--overwrite`.
"""

from __future__ import annotations

from collections.abc import Sequence
import os

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.inference import export

_MODEL_DIR = flags.DEFINE_string(
  'model_dir',
  None,
  'A model folder written by tff_brats.models.model_io (config.json + '
  'weights).',
)

_KERAS_OUTPUT = flags.DEFINE_string(
  'keras_output',
  None,
  'The Keras-native file to write (default: <output_dir>.keras; an empty '
  'value writes none).',
)

# The shared flags this binary reads; --help lists them with its own.
shared_flags.declare_key_flags(
  'output_dir',
  'overwrite',
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  shared_flags.require('model_dir', 'output_dir')
  try:
    keras_output = _KERAS_OUTPUT.value
    if keras_output is None:
      keras_output = shared_flags.OUTPUT_DIR.value.rstrip('/') + '.keras'
    if (
      keras_output
      and os.path.exists(keras_output)
      and not shared_flags.OVERWRITE.value
    ):  # checked before any work
      raise FileExistsError(
        f'--keras_output {keras_output!r} must not exist unless '
        'overwrite=True (--overwrite).'
      )
    path = export.export_model_dir(
      _MODEL_DIR.value,
      shared_flags.OUTPUT_DIR.value,
      overwrite=shared_flags.OVERWRITE.value,
    )
    training = export.read_training_metadata(path)
    if keras_output:
      keras_path = export.export_keras_file(
        _MODEL_DIR.value, keras_output, overwrite=shared_flags.OVERWRITE.value
      )
  except (ValueError, FileExistsError) as e:
    # The message names the argument and the value; a traceback would only
    # bury it.
    raise SystemExit(f'export_model: error: {e}') from None
  print(f'SavedModel: {path}')
  if keras_output:
    print(f'Keras file: {keras_path}')
  if training is None:
    print(
      'Training record: none (the model folder records no training crop; '
      'pass --window to predict.py and evaluate.py).'
    )
  else:
    print(
      f'Training record: crop {list(training.crop_size)}, crop margin '
      f'{training.crop_margin}.'
    )


def run_main() -> None:
  """Console entry point."""
  console.run(main)


if __name__ == '__main__':
  console.run(main)
