"""Overlay figures of segmentations (numpy + matplotlib, no TF).

The three nested regions are drawn in the colours BraTS figures use for the
labels they imply: oedema (WT minus TC) green, necrotic / non-enhancing core
(TC minus ET) red, enhancing tumour (ET) yellow, over a grey FLAIR slice.
The slice shown is the axial slice through the tumour's centre of mass in
the ground truth (the middle slice when there is no tumour), so the figure
shows tumour whenever there is any.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')  # files only, no display
from matplotlib import patches
import matplotlib.pyplot as plt
import numpy as np

from tff_brats.utils import atomic

# RGB in [0, 1]: oedema, necrotic core, enhancing tumour.
EDEMA_COLOUR = (0.0, 0.8, 0.0)
CORE_COLOUR = (0.9, 0.1, 0.1)
ENHANCING_COLOUR = (1.0, 0.9, 0.0)
_ALPHA = 0.5
# What the colours mean, for the legend of `save_case_figure`.
LEGEND = (
  (EDEMA_COLOUR, 'oedema (WT − TC)'),
  (CORE_COLOUR, 'necrotic core (TC − ET)'),
  (ENHANCING_COLOUR, 'enhancing tumour (ET)'),
)
_FLAIR = 3  # channel of FLAIR (2018) / T2-FLAIR (2023) in the image


def tumour_slice_index(regions: np.ndarray, axis: int = 2) -> int:
  """The slice through the centre of mass of WT (the middle if empty).

  Args:
    regions: Bool `[D, H, W, 3]` (TC, WT, ET).
    axis: Spatial axis along which slices are taken.
  """
  wt = np.asarray(regions)[..., 1]
  if not wt.any():
    return wt.shape[axis] // 2
  coords = np.nonzero(wt)[axis]
  return round(float(coords.mean()))


def overlay(
  image_slice: np.ndarray, regions_slice: np.ndarray | None
) -> np.ndarray:
  """An RGB float image: a grey slice with the regions blended on top.

  Args:
    image_slice: `[H, W]` intensities (any scale; shown min to max).
    regions_slice: Bool `[H, W, 3]` (TC, WT, ET), or None for the plain
      slice.

  Returns:
    float32 `[H, W, 3]` in [0, 1].
  """
  image_slice = np.asarray(image_slice, np.float32)
  low, high = np.percentile(image_slice, [0.5, 99.5])
  grey = np.clip((image_slice - low) / max(high - low, 1e-6), 0.0, 1.0)
  rgb = np.repeat(grey[..., np.newaxis], 3, axis=-1)
  if regions_slice is None:
    return rgb
  regions_slice = np.asarray(regions_slice).astype(bool)
  tc, wt, et = (regions_slice[..., i] for i in range(3))
  et_mask = et
  core_mask = (tc | et) & ~et_mask
  edema_mask = (wt | tc | et) & ~(tc | et)
  for mask, colour in (
    (edema_mask, EDEMA_COLOUR),
    (core_mask, CORE_COLOUR),
    (et_mask, ENHANCING_COLOUR),
  ):
    rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * np.asarray(colour)
  return rgb.astype(np.float32)


def case_panels(
  image: np.ndarray,
  truth: np.ndarray,
  prediction: np.ndarray,
  *,
  axis: int = 2,
) -> np.ndarray:
  """Image | ground truth | prediction, side by side, as uint8 RGB.

  Args:
    image: `[D, H, W, 4]` intensities (FLAIR is shown).
    truth: Bool `[D, H, W, 3]` ground-truth regions.
    prediction: Bool `[D, H, W, 3]` predicted regions.
    axis: Slicing axis (2 = axial for BraTS volumes).

  Returns:
    uint8 `[H', 3 * W', 3]`, e.g. for `tf.summary.image`.
  """
  index = tumour_slice_index(truth, axis)
  flair, truth_slice, prediction_slice = _slices(
    index, axis, image, truth, prediction
  )
  panels = [
    overlay(flair, None),
    overlay(flair, truth_slice),
    overlay(flair, prediction_slice),
  ]
  return (np.concatenate(panels, axis=1) * 255).round().astype(np.uint8)


def save_case_figure(
  path: str,
  cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
  *,
  scores: Sequence[dict[str, float]] | None = None,
  axis: int = 2,
) -> str:
  """Writes a PNG: one row per case (image, ground truth, prediction).

  Args:
    path: The PNG to write (atomically, see `atomic.staged_file`); its
      folder must exist.
    cases: `(case_id, image, truth_regions, predicted_regions)` tuples.
    scores: Optional per-case dicts (e.g. {'Dice WT': 0.91}) shown in the
      prediction's title.
    axis: Slicing axis.

  Returns:
    `path`.
  """
  if not cases:
    raise ValueError('cases must not be empty. Found 0 cases.')
  rows = len(cases)
  fig, axes = plt.subplots(rows, 3, figsize=(9, 3.2 * rows), squeeze=False)
  for row, (case_id, image, truth, prediction) in enumerate(cases):
    index = tumour_slice_index(truth, axis)
    flair, truth_slice, prediction_slice = _slices(
      index, axis, image, truth, prediction
    )
    titles = [f'{case_id}\nFLAIR, slice {index}', 'ground truth', 'prediction']
    if scores is not None:
      titles[2] += '\n' + ', '.join(
        f'{k} {v:.2f}' for k, v in scores[row].items()
      )
    for col, regions in enumerate((None, truth_slice, prediction_slice)):
      ax = axes[row][col]
      ax.imshow(
        np.transpose(overlay(flair, regions), (1, 0, 2)), origin='lower'
      )
      ax.set_title(titles[col], fontsize=8)
      ax.axis('off')
  try:
    fig.legend(
      handles=[
        patches.Patch(color=colour, alpha=_ALPHA + 0.2, label=label)
        for colour, label in LEGEND
      ],
      loc='lower center',
      ncol=len(LEGEND),
      fontsize=8,
      frameon=False,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with atomic.staged_file(path) as tmp:
      fig.savefig(tmp, dpi=100, format='png')
  finally:
    plt.close(fig)
  return path


def _slices(index, axis, image, truth, prediction):
  """The FLAIR, truth and prediction slices at `index` along `axis`."""
  flair = np.take(np.asarray(image)[..., _FLAIR], index, axis=axis)
  return (
    flair,
    np.take(np.asarray(truth), index, axis=axis),
    np.take(np.asarray(prediction), index, axis=axis),
  )
