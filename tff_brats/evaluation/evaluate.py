"""Scoring a model on prepared cases: sliding window, Dice and HD95 per case.

Used by the centralised trainer (validation every k epochs), by the
federated trainer, and by `experiments/evaluate.py`. Cases are read from a
prepared folder's shards, normalised by the training pipeline's own code
(`pipeline.make_evaluation_dataset`), predicted with a sliding window over
the stored brain crop, thresholded and scored per region.

Scores are computed on the stored brain crop with the original voxel
spacing. That equals scoring in the original voxel grid: the crop box holds
every non-zero voxel and every tumour label of the case, and predictions
are only made inside it (`predict.py` pastes them into a zero volume), so
both masks are zero outside the crop and neither Dice nor the surface
distances change.

How the sliding window runs is an `InferenceOptions`, as for prediction:
unless given, the window is the model's training crop (its record; 64³
for a model that records none, with a warning). The crop margin is the
prepared folder's; a model whose training data were prepared with another
margin is scored with a warning naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import csv
import dataclasses
import io
import json
import os
from typing import Any

from absl import logging
import numpy as np
import tqdm

from tff_brats.data import layouts
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import pipeline
from tff_brats.evaluation import figures
from tff_brats.evaluation import scoring
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.inference import sliding_window
from tff_brats.utils import atomic
from tff_brats.utils import checks

# Batch of normalised windows [B, d, h, w, 4] -> probabilities [B, ..., 3],
# e.g. a `tff_brats.inference.predictors.Predictor`.
PredictFn = Callable[[np.ndarray], np.ndarray]
# The window of a model that records no training crop (the trainers' default
# crop).
DEFAULT_WINDOW = (64, 64, 64)


@dataclasses.dataclass
class Evaluation:
  """Scores of a model on a set of prepared cases.

  Attributes:
    per_case: One dict per case: `case_id` and, per region, `dice_<R>` and
      `hd95_<R>` (R in TC, WT, ET), plus `dice_mean` and `hd95_mean`.
    summary: `scoring.summarize(per_case)`: mean, median and std of each.
    examples: `(case_id, image, truth, prediction)` of the first
      `num_examples` cases (for figures), image z-scored, masks bool.
    options: The options the cases were scored with (resolved for the
      model: window and crop margin set).
  """

  per_case: list[dict[str, Any]]
  summary: dict[str, Any]
  examples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
  options: options_lib.InferenceOptions | None = None

  @property
  def mean_dice(self) -> float:
    """Mean over cases of the per-case mean Dice of the three regions."""
    return float(self.summary['dice_mean']['mean'])


def evaluate_prepared(
  predict_fn: PredictFn,
  prepared: manifest_lib.Manifest,
  case_ids: Sequence[str] | None = None,
  options: options_lib.InferenceOptions | None = None,
  *,
  num_examples: int = 0,
  progress: bool = False,
) -> Evaluation:
  """Predicts and scores prepared cases.

  Args:
    predict_fn: Batch `[B, d, h, w, 4]` -> probabilities `[B, d, h, w, 3]`,
      e.g. a `predictors.Predictor` (whose training record gives the
      default window).
    prepared: The prepared folder's manifest.
    case_ids: Cases to score (any mix of clients and validation); None means
      the validation cases.
    options: The sliding window and threshold; None means
      `InferenceOptions()`. Unset, the window is the predictor's training
      crop (`DEFAULT_WINDOW` if it records none). `crop_margin` and
      `output_layout` do not apply (the prepared folder fixes the crop;
      scores are per region).
    num_examples: How many cases to keep in `Evaluation.examples`.
    progress: Whether to show a progress bar over cases.

  Returns:
    The `Evaluation`.

  Raises:
    ValueError: `case_ids` names a case the manifest does not have, or is
      empty; bad options.
  """
  options = options_lib.resolve_for(
    options, predict_fn, default_window=DEFAULT_WINDOW
  )
  if case_ids is None:
    case_ids = prepared.validation
  case_ids = list(case_ids)
  if not case_ids:
    raise ValueError('case_ids must name at least one case. Found none.')
  unknown = [c for c in case_ids if c not in prepared.cases]
  if unknown:
    raise ValueError(
      f'case_ids must be cases of {prepared.root}. Found unknown '
      f'{unknown[:5]}{" ..." if len(unknown) > 5 else ""}.'
    )
  _warn_if_other_crop_margin(predict_fn, prepared)
  wanted = set(case_ids)
  shard_paths = _shards_holding(prepared, case_ids)
  dataset = pipeline.make_evaluation_dataset(shard_paths)
  per_case = {}
  examples = {}
  with tqdm.tqdm(
    total=len(case_ids), desc='evaluating', unit='case', disable=not progress
  ) as bar:
    for case in dataset:
      case_id = case['case_id'].numpy().decode('utf-8')
      if case_id not in wanted or case_id in per_case:
        continue
      image = case['image'].numpy()
      truth = case['regions'].numpy() > 0.5
      probabilities = sliding_window.sliding_window_inference(
        predict_fn, image, **options.sliding_window_kwargs()
      )
      prediction = sliding_window.threshold(probabilities, options.threshold)
      spacing = prepared.cases[case_id].spacing
      scores = scoring.score_case(prediction, truth, spacing)
      per_case[case_id] = {'case_id': case_id, **scoring.flatten_scores(scores)}
      if len(examples) < num_examples:
        examples[case_id] = (case_id, image, truth, prediction)
      bar.update()
  ordered = [per_case[c] for c in case_ids]
  return Evaluation(
    per_case=ordered,
    summary=scoring.summarize(
      [{k: v for k, v in row.items() if k != 'case_id'} for row in ordered]
    ),
    examples=[examples[c] for c in case_ids if c in examples],
    options=options,
  )


def write_per_case_csv(path: str, per_case: Sequence[dict[str, Any]]) -> str:
  """Writes one row per case and region: case_id, region, dice, hd95."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(['case_id', 'region', 'dice', 'hd95_mm'])
  for row in per_case:
    for region in (*layouts.REGIONS, 'mean'):
      writer.writerow(
        [
          row['case_id'],
          region,
          f'{row[f"dice_{region}"]:.6f}',
          f'{row[f"hd95_{region}"]:.4f}',
        ]
      )
  atomic.write_text(path, buffer.getvalue())
  return path


def write_summary_json(path: str, evaluation: Evaluation, **extra: Any) -> str:
  """Writes the summary (and any extra fields) as JSON."""
  payload = {**extra, 'num_cases': len(evaluation.per_case)}
  payload['summary'] = evaluation.summary
  atomic.write_text(path, json.dumps(payload, indent=1, sort_keys=True) + '\n')
  return path


def _shards_holding(
  prepared: manifest_lib.Manifest, case_ids: Sequence[str]
) -> list[str]:
  names = sorted({prepared.cases[c].shard for c in case_ids})
  return [os.path.join(prepared.shard_dir, name) for name in names]


def select_cases(prepared: manifest_lib.Manifest, spec: str) -> list[str]:
  """Case ids named by 'validation', 'all', 'client:<id>' or 'id,id,...'."""
  if spec == 'validation':
    cases = list(prepared.validation)
  elif spec == 'all':
    cases = [c for ids in prepared.clients.values() for c in ids]
    cases += list(prepared.validation)
  elif spec.startswith('client:'):
    client = spec.split(':', 1)[1]
    if client not in prepared.clients:
      raise ValueError(
        f'cases must name a client of {prepared.root} '
        f'({sorted(prepared.clients)}). Found {client!r}.'
      )
    cases = list(prepared.clients[client])
  else:
    cases = [c.strip() for c in spec.split(',') if c.strip()]
  if not cases:
    raise ValueError(f'cases must select at least one case. Found {spec!r}.')
  return cases


def run_evaluation(
  *,
  model: str,
  data_dir: str,
  output_dir: str,
  cases: str = 'validation',
  options: options_lib.InferenceOptions | None = None,
  num_figure_cases: int = 3,
  overwrite: bool = False,
  progress: bool = True,
) -> dict[str, str]:
  """Scores `model` on prepared cases and writes CSV, JSON and a figure.

  `summary.json` holds the scores, the options they were obtained with
  (window and all) and the model's training record.

  Args:
    model: A model folder (`model_io`) or an exported SavedModel.
    data_dir: A prepared folder.
    output_dir: Where to write `per_case.csv`, `summary.json`, `cases.png`.
    cases: See `select_cases`.
    options: See `evaluate_prepared`; None: the model's training crop as
      window and the other defaults.
    num_figure_cases: Cases in the figure (0: none).
    overwrite: Whether existing outputs may be replaced.
    progress: Show a progress bar.

  Returns:
    Output name -> path.
  """
  checks.check_non_negative_int('num_figure_cases', num_figure_cases)
  outputs = {
    'per_case_csv': os.path.join(output_dir, 'per_case.csv'),
    'summary_json': os.path.join(output_dir, 'summary.json'),
  }
  if num_figure_cases:
    outputs['figure'] = os.path.join(output_dir, 'cases.png')
  existing = [p for p in outputs.values() if os.path.exists(p)]
  if existing and not overwrite:
    raise FileExistsError(
      f'{existing[0]} exists; pass overwrite=True (--overwrite) to replace it.'
    )
  prepared = manifest_lib.load(data_dir)
  case_ids = select_cases(prepared, cases)
  predictor = predictors.load_predictor(model)
  result = evaluate_prepared(
    predictor,
    prepared,
    case_ids,
    options,
    num_examples=num_figure_cases,
    progress=progress,
  )
  os.makedirs(output_dir, exist_ok=True)
  write_per_case_csv(outputs['per_case_csv'], result.per_case)
  write_summary_json(
    outputs['summary_json'],
    result,
    model=os.path.abspath(model),
    data_dir=prepared.root,
    cases=cases,
    **_scored_with(result.options),
    training=(
      None if predictor.training is None else predictor.training.to_json()
    ),
  )
  if num_figure_cases:
    scores = {row['case_id']: row for row in result.per_case}
    figures.save_case_figure(
      outputs['figure'],
      result.examples,
      scores=[
        {f'Dice {r}': scores[case_id][f'dice_{r}'] for r in layouts.REGIONS}
        for case_id, *_ in result.examples
      ],
    )
  return outputs


def _scored_with(options: options_lib.InferenceOptions) -> dict[str, Any]:
  """The options that apply to scoring prepared cases, as JSON values."""
  values = options.to_json()
  # The prepared folder fixes the crop; scores are per region.
  del values['crop_margin'], values['output_layout']
  return values


def _warn_if_other_crop_margin(
  predict_fn: PredictFn, prepared: manifest_lib.Manifest
) -> None:
  training = getattr(predict_fn, 'training', None)
  recorded = None if training is None else training.crop_margin
  prepared_margin = prepared.request.get('crop_margin')
  if recorded is None or prepared_margin is None:
    return
  if recorded != prepared_margin:
    logging.warning(
      '%s was prepared with crop_margin %s, the model was trained on data '
      'prepared with crop_margin %s; scores on other crops than the '
      "training data's may be lower.",
      prepared.root,
      prepared_margin,
      recorded,
    )
