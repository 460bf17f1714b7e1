"""Benchmarks HD95 on full-size BraTS cases: seconds per region.

The case is a 240×240×155 volume at 1 mm (`--shape`, D first as the reader
returns it). The truth is an ellipsoidal tumour; the prediction is a
shifted, reshaped ellipsoid plus false-positive voxels scattered uniformly
over the whole volume at each rate of `--false_positive_rates` (a rate of 0
is a clean prediction). For each it times, over `--repeats` calls (the
minimum is reported):

* `seconds`: `scoring.hd95`, the project's exact k-d tree version;
* `medpy_seconds`: MedPy's definition computed as MedPy does, with
  whole-volume distance transforms (`--medpy`; skip with `--nomedpy`),
  and the absolute difference of the two results.

Example:

  python -m benchmarks.hd95 --false_positive_rates=0,1e-4,1e-3,1e-2

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import sys
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np
from scipy import ndimage

from tff_brats.evaluation import scoring

_SHAPE = flags.DEFINE_list(
  'shape', ['155', '240', '240'], 'Volume shape (D, H, W) in voxels.'
)
_RATES = flags.DEFINE_list(
  'false_positive_rates',
  ['0', '1e-4', '1e-3', '1e-2'],
  'Fractions of the volume turned into scattered false positives.',
)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per case.')
_MEDPY = flags.DEFINE_bool(
  'medpy', True, 'Also time the whole-volume distance-transform reference.'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the false positives.')


def _ellipsoid(shape, centre, radii) -> np.ndarray:
  grid = np.ogrid[tuple(slice(0, n) for n in shape)]
  return (
    sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    < 1.0
  )


def _medpy_hd95(prediction, truth, spacing) -> float:
  """MedPy's `hd95`: whole-volume erosions and distance transforms."""
  structure = ndimage.generate_binary_structure(prediction.ndim, 1)
  prediction_surface = prediction & ~ndimage.binary_erosion(
    prediction, structure
  )
  truth_surface = truth & ~ndimage.binary_erosion(truth, structure)
  to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
  to_prediction = ndimage.distance_transform_edt(
    ~prediction_surface, sampling=spacing
  )
  return float(
    np.percentile(
      np.hstack((to_truth[prediction_surface], to_prediction[truth_surface])),
      95,
    )
  )


def _best_time(fn, repeats: int) -> tuple[Any, float]:
  best = float('inf')
  value = None
  for _ in range(repeats):
    start = time.perf_counter()
    value = fn()
    best = min(best, time.perf_counter() - start)
  return value, best


def run_benchmark(
  *,
  shape: Sequence[int],
  rates: Sequence[float],
  repeats: int,
  medpy: bool,
  seed: int,
) -> dict[str, Any]:
  """Runs the measurements; returns the JSON-able result."""
  if len(shape) != 3 or min(shape) < 16:
    raise ValueError(f'--shape must be 3 sizes of at least 16. Found {shape}.')
  if repeats < 1:
    raise ValueError(f'--repeats must be at least 1. Found {repeats}.')
  for rate in rates:
    if not 0.0 <= rate < 1.0:
      raise ValueError(
        f'--false_positive_rates must be in [0, 1). Found {rate}.'
      )
  spacing = (1.0, 1.0, 1.0)
  centre = [n / 2 for n in shape]
  truth = _ellipsoid(shape, centre, [n / 5 for n in shape])
  tumour = _ellipsoid(
    shape,
    [c + 2 for c in centre],
    [n / 5 * f for n, f in zip(shape, (1.1, 0.9, 1.0), strict=True)],
  )
  rng = np.random.default_rng(seed)
  cases = []
  for rate in rates:
    prediction = tumour | (rng.random(shape) < rate)
    value, seconds = _best_time(
      lambda p=prediction: scoring.hd95(p, truth, spacing), repeats
    )
    case = {
      'false_positive_rate': rate,
      'false_positive_voxels': int(np.count_nonzero(prediction & ~tumour)),
      'hd95_mm': value,
      'seconds': seconds,
    }
    if medpy:
      reference, medpy_seconds = _best_time(
        lambda p=prediction: _medpy_hd95(p, truth, spacing), repeats
      )
      case['medpy_seconds'] = medpy_seconds
      case['abs_difference_mm'] = abs(value - reference)
    print(f'{case}', file=sys.stderr)
    cases.append(case)
  return {'shape': list(shape), 'repeats': repeats, 'cases': cases}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    shape = [int(v) for v in _SHAPE.value]
    rates = [float(v) for v in _RATES.value]
  except ValueError:
    raise app.UsageError(
      f'--shape must be integers and --false_positive_rates numbers. Found '
      f'{_SHAPE.value} and {_RATES.value}.'
    ) from None
  try:
    result = run_benchmark(
      shape=shape,
      rates=rates,
      repeats=_REPEATS.value,
      medpy=_MEDPY.value,
      seed=_SEED.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  json.dump(result, sys.stdout, indent=1)
  sys.stdout.write('\n')


if __name__ == '__main__':
  app.run(main)
