"""Segments BraTS cases with a saved model (the runs of predict.py).

`run_prediction` takes the cases of one input form
(`segmentation_io.resolve_cases`), checks everything cheap first (input
files, model folder, outputs), loads the model (`predictors.load_predictor`)
and hands over to `segment_cases`, which resolves the options once for the
model (window and crop margin from its training record unless given; see
`options.InferenceOptions.resolve`), segments each case
(`case_prediction.predict_case`) and writes `<output_dir>/<case_id>.nii.gz`
(`segmentation_io.write_segmentation`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import os
from typing import Any

import numpy as np
import tqdm

from tff_brats.data import reader
from tff_brats.inference import case_prediction
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.inference import segmentation_io


def segment_cases(
  predictor: Callable[[np.ndarray], Any],
  cases: Sequence[reader.Case],
  output_dir: str,
  options: options_lib.InferenceOptions | None = None,
  *,
  overwrite: bool = False,
  progress: bool = True,
) -> list[str]:
  """Segments cases and writes `<output_dir>/<case_id>.nii.gz` for each.

  The options are resolved for the predictor once (so a window that
  differs from the model's training crop is warned about once), and every
  output is checked before the first case is read, so an existing output
  stops the run before any work (unless `overwrite`). A bad case stops the
  run with its error; the outputs of the cases before it stay (each
  complete) and the bad case writes nothing.

  Args:
    predictor: A `predictors.Predictor`.
    cases: The cases.
    output_dir: Created if missing.
    options: How to segment (see `case_prediction.predict_case`).
    overwrite: Whether existing outputs may be replaced.
    progress: Whether to show a progress bar over cases (stderr).

  Returns:
    The written paths, in case order.
  """
  options = options_lib.resolve_for(options, predictor)
  paths = segmentation_io.planned_outputs(cases, output_dir, overwrite)
  os.makedirs(output_dir, exist_ok=True)
  written = []
  with tqdm.tqdm(
    total=len(cases), desc='segmenting cases', unit='case', disable=not progress
  ) as bar:
    for case, path in zip(cases, paths, strict=True):
      bar.set_postfix_str(case.case_id)
      prediction = case_prediction.predict_case(predictor, case, options)
      written.append(
        segmentation_io.write_segmentation(
          prediction.labels, case.image_paths[0], path, overwrite=overwrite
        )
      )
      bar.update()
  return written


def run_prediction(
  *,
  model: str,
  output_dir: str,
  case_dir: str | None = None,
  image_paths: Mapping[str, str] | None = None,
  case_id: str | None = None,
  data_dir: str | None = None,
  options: options_lib.InferenceOptions | None = None,
  overwrite: bool = False,
  progress: bool = True,
) -> list[str]:
  """Segments the cases of one input form with the model at `model`.

  Cheap checks come first (input form, case files, model folder, existing
  outputs); the model is loaded only when they pass.

  Args:
    model: An exported SavedModel folder or a `model_io` folder.
    output_dir: Where `<case_id>.nii.gz` files go.
    case_dir: See `segmentation_io.resolve_cases`.
    image_paths: See `segmentation_io.resolve_cases`.
    case_id: See `segmentation_io.resolve_cases`.
    data_dir: See `segmentation_io.resolve_cases`.
    options: How to segment; None means `InferenceOptions()`: the model's
      training crop as window and its training data's crop margin.
    overwrite: Whether existing outputs may be replaced.
    progress: Whether to show a progress bar.

  Returns:
    The written paths.
  """
  if options is not None and not isinstance(
    options, options_lib.InferenceOptions
  ):
    raise ValueError(
      f'options must be an InferenceOptions. Found {type(options).__name__}.'
    )
  cases = segmentation_io.resolve_cases(
    case_dir=case_dir,
    image_paths=image_paths,
    case_id=case_id,
    data_dir=data_dir,
  )
  predictors.model_kind(model)
  segmentation_io.planned_outputs(cases, output_dir, overwrite)
  predictor = predictors.load_predictor(model)
  return segment_cases(
    predictor,
    cases,
    output_dir,
    options,
    overwrite=overwrite,
    progress=progress,
  )
