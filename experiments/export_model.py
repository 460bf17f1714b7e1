r"""Exports a trained model folder as a plain TensorFlow SavedModel.

Example:

  python -m experiments.export_model --model_dir=/runs/exp1/model \
    --output_dir=/runs/exp1/saved_model

The SavedModel loads with `tf.saved_model.load` alone (no tff_brats, no
custom objects). Its `serving_default` signature maps normalised volumes
`image` float32 [batch, D, H, W, 4] to `probabilities` float32
[batch, D, H, W, 3] (TC, WT, ET); its `normalize` signature is the training
normalisation of one whole case. See `tff_brats.inference.export`.

The model folder's training record (training crop and crop margin, written
by the trainers) is copied into the SavedModel's metadata, so predict.py
and evaluate.py use it as their defaults; the binary prints it.

Writing is atomic; an existing output (`--output_dir`, the SavedModel folder
to create) needs `--overwrite`.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import flags

from experiments import shared_flags
from tff_brats.inference import export

_MODEL_DIR = flags.DEFINE_string(
  'model_dir',
  None,
  'A model folder written by tff_brats.models.model_io (config.json + '
  'weights).',
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
    path = export.export_model_dir(
      _MODEL_DIR.value,
      shared_flags.OUTPUT_DIR.value,
      overwrite=shared_flags.OVERWRITE.value,
    )
    training = export.read_training_metadata(path)
  except (ValueError, FileExistsError) as e:
    # The message names the argument and the value; a traceback would only
    # bury it.
    raise SystemExit(f'export_model: error: {e}') from None
  print(f'SavedModel: {path}')
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
  app.run(main)


if __name__ == '__main__':
  app.run(main)
