"""Sliding-window inference over a whole volume, and probabilities to labels.

A segmentation network trained on fixed-size crops sees a whole case
through windows of that size (MONAI's `sliding_window_inference`; Isensee
et al. 2021, nnU-Net):

* Windows lie on a regular grid: along each axis the starts are
  0, s, 2s, ... with the step s = max(1, floor(window · (1 − overlap))),
  and the last window is moved back to end flush with the volume, so every
  voxel is covered and no window sticks out. An axis no longer than the
  window gets one window.
* A volume smaller than the window along an axis is padded to the window
  size first (centred, as the training pipeline's `pad_to_size` pads, the
  extra voxel of an odd padding after the volume), and the padding is
  removed from the result.
* Windows go through `predict_fn` in batches of `batch_size`.
* Overlapping predictions are blended with an importance map, a Gaussian
  of standard deviation `sigma_scale` × window size per axis centred on the
  window (MONAI and nnU-Net use 1/8), so voxels near a window's border,
  where the network sees the least context, count least; or with constant
  weights (a plain average). The sum of weighted predictions is divided by
  the sum of weights, so a prediction that is the same in every window
  comes out unchanged.

`threshold` and `probabilities_to_labels` turn the (TC, WT, ET) region
probabilities into a BraTS label map through `layouts.regions_to_labels`
(ET inside TC inside WT).

Plain numpy; `predict_fn` may return numpy arrays or TF tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import itertools
import math
from typing import Any

import numpy as np

from tff_brats.data import layouts
from tff_brats.utils import checks

BLENDING_MODES = ('gaussian', 'constant')
PAD_MODES = ('constant', 'edge', 'reflect')
DEFAULT_OVERLAP = 0.5
# MONAI's and nnU-Net's Gaussian: sigma = window size / 8.
DEFAULT_SIGMA_SCALE = 0.125
DEFAULT_THRESHOLD = 0.5
# Smallest Gaussian weight (relative to the centre's 1), as MONAI clamps it:
# window corners would otherwise weigh ~1e-11 and lose to round-off.
MIN_GAUSSIAN_WEIGHT = 1e-3

PredictFn = Callable[[np.ndarray], Any]
Box = tuple[tuple[int, int], ...]


def sliding_window_inference(
  predict_fn: PredictFn,
  image: np.ndarray,
  *,
  window: int | Sequence[int],
  overlap: float = DEFAULT_OVERLAP,
  blending: str = 'gaussian',
  sigma_scale: float | Sequence[float] = DEFAULT_SIGMA_SCALE,
  batch_size: int = 1,
  pad_mode: str = 'constant',
) -> np.ndarray:
  """Predicts a whole volume window by window and blends the windows.

  Args:
    predict_fn: Maps a float32 batch `[B, d, h, w, C]` (B ≤ `batch_size`;
      `(d, h, w)` = `window`) to `[B, d, h, w, K]` probabilities (numpy or
      a tensor).
    image: float32 `[D, H, W, C]`, one case, normalised as the network
      expects.
    window: `(d, h, w)` window size, or one int for a cube.
    overlap: Fraction of a window shared with its neighbour, in [0, 1).
    blending: 'gaussian' (importance map, see `importance_map`) or
      'constant' (plain average).
    sigma_scale: The Gaussian's sigma as a fraction of the window size, one
      positive number or one per axis.
    batch_size: Windows per `predict_fn` call.
    pad_mode: How a volume smaller than the window is padded: 'constant'
      (zeros, the normalised background), 'edge' or 'reflect' (numpy's
      `np.pad` modes).

  Returns:
    float32 `[D, H, W, K]`, the blended probabilities.

  Raises:
    ValueError: Bad arguments, or `predict_fn` returns the wrong shape or
      non-finite values.
  """
  window = check_options(
    window=window,
    overlap=overlap,
    blending=blending,
    sigma_scale=sigma_scale,
    batch_size=batch_size,
    pad_mode=pad_mode,
  )
  image = _check_image(image)
  weights = importance_map(window, blending=blending, sigma_scale=sigma_scale)
  padded, box = _pad_to_window(image, window, pad_mode)
  corners = window_corners(padded.shape[:3], window, overlap)
  weight_sum = np.zeros(padded.shape[:3], np.float32)
  total = None
  for start in range(0, len(corners), batch_size):
    chunk = corners[start : start + batch_size]
    batch = np.stack([padded[_window_slices(c, window)] for c in chunk])
    predictions = _checked_predictions(predict_fn(batch), len(chunk), window)
    if total is None:
      total = np.zeros((*padded.shape[:3], predictions.shape[-1]), np.float32)
    elif predictions.shape[-1] != total.shape[-1]:
      raise ValueError(
        f'predict_fn must return the same number of channels for every '
        f'batch. Found {total.shape[-1]} and then {predictions.shape[-1]}.'
      )
    for corner, prediction in zip(chunk, predictions, strict=True):
      where = _window_slices(corner, window)
      total[where] += prediction * weights[..., np.newaxis]
      weight_sum[where] += weights
  total /= weight_sum[..., np.newaxis]
  return np.ascontiguousarray(total[tuple(slice(a, b) for a, b in box)])


def window_starts(
  size: int, window: int, overlap: float = DEFAULT_OVERLAP
) -> list[int]:
  """The window starts along one axis of `size` voxels (see the module doc).

  Args:
    size: The axis length, at least `window` (pad smaller volumes first).
    window: The window length.
    overlap: In [0, 1).

  Returns:
    Increasing starts; the first is 0, the last is `size - window`.
  """
  checks.check_positive_int('window', window)
  check_overlap(overlap)
  if not checks.is_int(size) or size < window:
    raise ValueError(
      f'size must be an integer at least window ({window}). Found {size!r}.'
    )
  step = max(1, int(window * (1.0 - overlap)))
  count = 1 + max(0, math.ceil((size - window) / step))
  return [min(i * step, size - window) for i in range(count)]


def window_corners(
  shape: Sequence[int],
  window: int | Sequence[int],
  overlap: float = DEFAULT_OVERLAP,
) -> list[tuple[int, int, int]]:
  """The first voxel of every window over a volume at least `window` big."""
  window = check_window(window)
  starts = [
    window_starts(int(n), w, overlap)
    for n, w in zip(shape, window, strict=True)
  ]
  return list(itertools.product(*starts))


def num_windows(
  shape: Sequence[int],
  window: int | Sequence[int],
  overlap: float = DEFAULT_OVERLAP,
) -> int:
  """How many windows `sliding_window_inference` runs over a volume.

  Args:
    shape: `(D, H, W)`; axes shorter than the window count as padded to it.
    window: `(d, h, w)` or one int.
    overlap: In [0, 1).
  """
  window = check_window(window)
  padded = [max(int(n), w) for n, w in zip(shape, window, strict=True)]
  return len(window_corners(padded, window, overlap))


def importance_map(
  window: int | Sequence[int],
  *,
  blending: str = 'gaussian',
  sigma_scale: float | Sequence[float] = DEFAULT_SIGMA_SCALE,
) -> np.ndarray:
  """The weight of each voxel of a window when windows are blended.

  'gaussian' is MONAI's `compute_importance_map`: a separable Gaussian with
  sigma = `sigma_scale` × window size per axis, centred on the window
  (between the two middle voxels of an even axis), 1 at that centre and
  clamped from below at `MIN_GAUSSIAN_WEIGHT`. 'constant' is all ones.

  Args:
    window: `(d, h, w)` or one int.
    blending: 'gaussian' or 'constant'.
    sigma_scale: One positive number or one per axis (ignored for
      'constant').

  Returns:
    float32 `[d, h, w]`.
  """
  window = check_window(window)
  if blending not in BLENDING_MODES:
    raise ValueError(
      f'blending must be one of {BLENDING_MODES}. Found {blending!r}.'
    )
  scales = check_sigma_scale(sigma_scale)
  if blending == 'constant':
    return np.ones(window, np.float32)
  weights = np.ones((), np.float64)
  for size, scale in zip(window, scales, strict=True):
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    profile = np.exp(-(offsets**2) / (2.0 * (scale * size) ** 2))
    weights = np.multiply.outer(weights, profile)
  return np.maximum(weights, MIN_GAUSSIAN_WEIGHT).astype(np.float32)


def threshold(
  probabilities: np.ndarray, value: float = DEFAULT_THRESHOLD
) -> np.ndarray:
  """Region masks: probability ≥ `value` (MONAI's `AsDiscrete(threshold)`).

  Args:
    probabilities: `[..., 3]` (TC, WT, ET) probabilities.
    value: The threshold, in (0, 1).

  Returns:
    bool, same shape.
  """
  return _threshold(probabilities, value)


def probabilities_to_labels(
  probabilities: np.ndarray,
  layout: str | layouts.Layout,
  *,
  threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
  """(TC, WT, ET) probabilities to a BraTS label map of `layout`.

  Thresholds each region, then applies `layouts.regions_to_labels` (a voxel
  in ET is enhancing, in TC but not ET necrotic, in WT only oedema).

  Args:
    probabilities: `[..., 3]` region probabilities.
    layout: 'brats2018' (labels 0/1/2/4), 'brats2023' (0/1/2/3) or a
      `layouts.Layout`.
    threshold: See `threshold`.

  Returns:
    uint8 `probabilities.shape[:-1]`.
  """
  if isinstance(layout, str):
    layout = layouts.get_layout(layout)
  if not isinstance(layout, layouts.Layout):
    raise ValueError(
      f'layout must be a layout name or a layouts.Layout. Found {layout!r}.'
    )
  regions = _threshold(probabilities, threshold)
  return layouts.regions_to_labels(regions, layout)


def check_options(
  *,
  window: Any,
  overlap: Any = DEFAULT_OVERLAP,
  blending: Any = 'gaussian',
  sigma_scale: Any = DEFAULT_SIGMA_SCALE,
  batch_size: Any = 1,
  pad_mode: Any = 'constant',
) -> tuple[int, int, int]:
  """Checks the options of `sliding_window_inference`; returns the window.

  Callers that read a whole case before the sliding window runs check the
  options first, so a typo fails before the expensive part.

  Raises:
    ValueError: Naming the bad option and its value.
  """
  window = check_window(window)
  check_overlap(overlap)
  if blending not in BLENDING_MODES:
    raise ValueError(
      f'blending must be one of {BLENDING_MODES}. Found {blending!r}.'
    )
  check_sigma_scale(sigma_scale)
  checks.check_positive_int('batch_size', batch_size)
  if pad_mode not in PAD_MODES:
    raise ValueError(
      f'pad_mode must be one of {PAD_MODES}. Found {pad_mode!r}.'
    )
  return window


def check_window(window: Any) -> tuple[int, int, int]:
  """Returns `window` as 3 positive ints (one int means a cube)."""
  if checks.is_int(window):
    window = (window,) * 3
  if (
    not isinstance(window, Sequence)
    or isinstance(window, str)
    or len(window) != 3
    or not all(checks.is_int(w) and w >= 1 for w in window)
  ):
    raise ValueError(
      'window must be 3 positive integers (d, h, w) or one positive '
      f'integer. Found {window!r}.'
    )
  return tuple(int(w) for w in window)


def check_threshold(value: Any) -> None:
  """Raises ValueError unless `value` is a number in (0, 1)."""
  if not checks.is_number(value) or not 0.0 < value < 1.0:
    raise ValueError(f'threshold must be in (0, 1). Found {value!r}.')


def check_overlap(overlap: Any) -> None:
  """Raises ValueError unless `overlap` is a number in [0, 1)."""
  if not checks.is_number(overlap) or not 0.0 <= overlap < 1.0:
    raise ValueError(f'overlap must be in [0, 1). Found {overlap!r}.')


def check_sigma_scale(sigma_scale: Any) -> tuple[float, float, float]:
  """Returns `sigma_scale` as 3 positive floats (one number: every axis)."""
  if checks.is_number(sigma_scale):
    sigma_scale = (sigma_scale,) * 3
  if (
    not isinstance(sigma_scale, Sequence)
    or isinstance(sigma_scale, str)
    or len(sigma_scale) != 3
    or not all(checks.is_number(s) and 0 < s < math.inf for s in sigma_scale)
  ):
    raise ValueError(
      'sigma_scale must be one positive number or 3 (one per axis). '
      f'Found {sigma_scale!r}.'
    )
  return tuple(float(s) for s in sigma_scale)


def _threshold(probabilities: np.ndarray, value: Any) -> np.ndarray:
  check_threshold(value)
  return np.asarray(probabilities) >= value


def _check_image(image: Any) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 4 or min(image.shape, default=0) < 1:
    raise ValueError(
      f'image must have shape [D, H, W, C] with every size at least 1. '
      f'Found {image.shape}.'
    )
  if image.dtype.kind not in 'biuf':
    raise ValueError(f'image must hold real numbers. Found {image.dtype}.')
  image = image.astype(np.float32, copy=False)
  if not np.isfinite(image).all():
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(image))[0])
    raise ValueError(
      f'image must be finite. Found {image[index]} at index {index}.'
    )
  return image


def _pad_to_window(
  image: np.ndarray, window: tuple[int, int, int], pad_mode: str
) -> tuple[np.ndarray, Box]:
  """Pads axes shorter than the window; returns the volume's box in it."""
  widths, box = [], []
  for size, length in zip(image.shape[:3], window, strict=True):
    total = max(0, length - size)
    before = total // 2
    widths.append((before, total - before))
    box.append((before, before + size))
  if not any(total for total in sum(widths, ())):
    return image, tuple(box)
  padded = np.pad(image, [*widths, (0, 0)], mode=pad_mode)
  return padded, tuple(box)


def _window_slices(
  corner: Sequence[int], window: Sequence[int]
) -> tuple[slice, ...]:
  return tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True))


def _checked_predictions(
  predictions: Any, count: int, window: tuple[int, int, int]
) -> np.ndarray:
  predictions = np.asarray(predictions)
  if (
    predictions.ndim != 5
    or predictions.shape[:4] != (count, *window)
    or predictions.shape[4] < 1
  ):
    raise ValueError(
      f'predict_fn must return [batch, d, h, w, K] = '
      f'[{count}, {", ".join(map(str, window))}, K] for a batch of {count} '
      f'windows. Found shape {predictions.shape}.'
    )
  if predictions.dtype.kind not in 'biuf':
    raise ValueError(
      f'predict_fn must return real numbers. Found {predictions.dtype}.'
    )
  predictions = predictions.astype(np.float32, copy=False)
  if not np.isfinite(predictions).all():
    raise ValueError(
      f'predict_fn must return finite values. Found '
      f'{int(np.size(predictions) - np.isfinite(predictions).sum())} '
      f'non-finite value(s).'
    )
  return predictions
