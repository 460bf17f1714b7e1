"""Tests for tff_brats.inference.sliding_window."""

from __future__ import annotations

import numpy as np
import pytest

from tff_brats.data import layouts
from tff_brats.inference import sliding_window


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _per_voxel(batch):
  """A 'network' whose output at a voxel depends only on that voxel."""
  return _sigmoid(batch[..., :3] * 0.5 + batch[..., 3:4])


class _Recorder:
  """Counts windows and records batch sizes."""

  def __init__(self):
    self.batch_sizes = []

  def __call__(self, batch):
    self.batch_sizes.append(batch.shape[0])
    return _per_voxel(batch)


def _image(shape, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(*shape, 4)).astype(np.float32)


# The window grid.


@pytest.mark.parametrize(
  'size, window, overlap, expected',
  [
    (10, 10, 0.5, [0]),  # one window fits exactly
    (16, 8, 0.5, [0, 4, 8]),  # step 4, divisible
    (17, 8, 0.5, [0, 4, 8, 9]),  # last window moved back to end at 17
    (20, 8, 0.0, [0, 8, 12]),  # no overlap: last one overlaps anyway
    (20, 8, 0.25, [0, 6, 12]),  # step floor(8 · 0.75) = 6, 12 + 8 = 20
    (9, 8, 0.9, [0, 1]),  # step floor(0.8) → 1
    (12, 5, 0.5, [0, 2, 4, 6, 7]),  # step floor(2.5) = 2
  ],
)
def test_window_starts_by_hand(size, window, overlap, expected):
  assert sliding_window.window_starts(size, window, overlap) == expected


@pytest.mark.parametrize(
  'shape, window, overlap, expected',
  [
    # Per axis: 17 → [0, 4, 8, 9], 8 → [0], 12 → [0, 4]; 4 · 1 · 2 = 8.
    ((17, 8, 12), (8, 8, 8), 0.5, 8),
    # Smaller than the window on every axis: padded, one window.
    ((5, 3, 7), (8, 8, 8), 0.5, 1),
    # Step floor(8 · 0.75) = 6: 6 < 8 is padded → [0]; 20 → [0, 6, 12];
    # 9 → [0, 1]; 1 · 3 · 2 = 6.
    ((6, 20, 9), 8, 0.25, 6),
    # BraTS-sized crop, 128³ windows, half overlap: 2 · 2 · 2.
    ((140, 170, 140), 128, 0.5, 8),
  ],
)
def test_num_windows_by_hand(shape, window, overlap, expected):
  assert sliding_window.num_windows(shape, window, overlap) == expected
  recorder = _Recorder()
  if np.prod(shape) <= 20**3:
    sliding_window.sliding_window_inference(
      recorder, _image(shape), window=window, overlap=overlap
    )
    assert sum(recorder.batch_sizes) == expected


# Blending equals the direct full-volume result for per-voxel functions.


@pytest.mark.parametrize('blending', ['gaussian', 'constant'])
@pytest.mark.parametrize(
  'shape, window, overlap',
  [
    ((16, 16, 16), (8, 8, 8), 0.5),  # divisible
    ((17, 13, 11), (8, 6, 5), 0.5),  # non-divisible on every axis
    ((12, 10, 9), (8, 8, 8), 0.25),
    ((9, 9, 9), (4, 4, 4), 0.0),  # no overlap, last window flush
    ((5, 3, 7), (8, 8, 8), 0.5),  # smaller than the window: padded
    ((5, 20, 3), (8, 8, 8), 0.75),  # padded on two axes only
    ((8, 8, 8), (8, 8, 8), 0.5),  # exactly one window
  ],
)
def test_blend_of_per_voxel_function_is_exact(shape, window, overlap, blending):
  image = _image(shape, seed=sum(shape))
  result = sliding_window.sliding_window_inference(
    _per_voxel,
    image,
    window=window,
    overlap=overlap,
    blending=blending,
    batch_size=3,
  )
  assert result.dtype == np.float32
  assert result.shape == (*shape, 3)
  np.testing.assert_allclose(result, _per_voxel(image), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('pad_mode', ['constant', 'edge', 'reflect'])
def test_padding_is_removed_for_every_pad_mode(pad_mode):
  image = _image((3, 9, 4))
  result = sliding_window.sliding_window_inference(
    _per_voxel, image, window=(6, 6, 6), pad_mode=pad_mode
  )
  np.testing.assert_allclose(result, _per_voxel(image), rtol=1e-5, atol=1e-6)


def test_padding_is_centred_and_uses_pad_mode():
  seen = []

  def record(batch):
    seen.append(batch.copy())
    return np.ones((*batch.shape[:4], 1), np.float32)

  image = np.arange(1, 4, dtype=np.float32).reshape(3, 1, 1, 1)
  sliding_window.sliding_window_inference(
    record, image, window=(6, 1, 1), pad_mode='constant'
  )
  # 3 voxels in a 6-voxel window: 1 before, 2 after (odd extra goes after).
  np.testing.assert_array_equal(seen[0][0, :, 0, 0, 0], [0, 1, 2, 3, 0, 0])
  seen.clear()
  sliding_window.sliding_window_inference(
    record, image, window=(6, 1, 1), pad_mode='edge'
  )
  np.testing.assert_array_equal(seen[0][0, :, 0, 0, 0], [1, 1, 2, 3, 3, 3])


def test_batch_size_does_not_change_the_result():
  image = _image((13, 11, 10), seed=3)

  # Position-dependent output (not per voxel), so blending really mixes
  # different predictions and the test would see any batching error.
  def depends_on_window(batch):
    mean = batch.mean(axis=(1, 2, 3, 4), keepdims=True)
    return _sigmoid(batch[..., :2] + mean)

  results = {}
  for batch_size in (1, 2, 5, 100):
    recorder = []

    def fn(batch, recorder=recorder):
      recorder.append(batch.shape[0])
      return depends_on_window(batch)

    results[batch_size] = sliding_window.sliding_window_inference(
      fn, image, window=(6, 6, 6), overlap=0.5, batch_size=batch_size
    )
    total = sliding_window.num_windows((13, 11, 10), 6, 0.5)
    assert sum(recorder) == total
    assert max(recorder) == min(batch_size, total)
  for batch_size in (2, 5, 100):
    np.testing.assert_allclose(
      results[batch_size], results[1], rtol=1e-6, atol=1e-7
    )
  # The windows disagree, so the blend is not a per-voxel function.
  assert not np.allclose(
    results[1], _sigmoid(image[..., :2] + image.mean()), atol=1e-3
  )


def test_gaussian_blend_weights_window_centres_most():
  # Two windows over 12 voxels (window 8, no overlap → starts 0 and 4);
  # window 0 predicts 0 and window 1 predicts 1 everywhere. Voxels 4..7 are
  # covered by both: near window 0's centre (3.5) the blend leans to 0,
  # near window 1's centre (7.5) to 1; constant blending gives 0.5.
  def by_window(batch):
    return np.stack(
      [np.full((8, 1, 1, 1), float(b[0, 0, 0, 0])) for b in batch]
    )

  image = np.zeros((12, 1, 1, 1), np.float32)
  image[4:] = 1.0  # window 1 starts with 1, window 0 with 0
  gaussian = sliding_window.sliding_window_inference(
    by_window, image, window=(8, 1, 1), overlap=0.0, sigma_scale=0.125
  )[:, 0, 0, 0]
  constant = sliding_window.sliding_window_inference(
    by_window, image, window=(8, 1, 1), overlap=0.0, blending='constant'
  )[:, 0, 0, 0]
  np.testing.assert_array_equal(gaussian[:4], 0.0)
  np.testing.assert_array_equal(gaussian[8:], 1.0)
  np.testing.assert_allclose(constant[4:8], 0.5)
  # Hand computation, sigma = 1: voxel 4 is at 0.5 from window 0's centre
  # and 3.5 from window 1's; weights exp(-0.125) and exp(-6.125).
  w0, w1 = np.exp(-0.125), np.exp(-6.125)
  np.testing.assert_allclose(gaussian[4], w1 / (w0 + w1), rtol=1e-5)
  np.testing.assert_allclose(gaussian[7], w0 / (w0 + w1), rtol=1e-5)
  assert np.all(np.diff(gaussian[4:8]) > 0)


# The Gaussian importance map.


@pytest.mark.parametrize('window', [(9, 7, 5), (8, 6, 4), (1, 3, 2)])
def test_gaussian_map_is_symmetric_and_peaks_at_the_centre(window):
  weights = sliding_window.importance_map(window)
  assert weights.shape == window and weights.dtype == np.float32
  for axis in range(3):
    np.testing.assert_array_equal(weights, np.flip(weights, axis))
  centre = tuple((n - 1) // 2 for n in window)
  assert weights[centre] == weights.max()
  # The Gaussian peaks (at 1) at the window's centre, a voxel's centre only
  # along odd axes; even axes have two equal middle voxels.
  if all(n % 2 for n in window):
    assert weights.max() == 1.0
    assert np.sum(weights == weights.max()) == 1
  else:
    assert weights.max() < 1.0
    assert np.sum(weights == weights.max()) == 2 ** sum(
      n % 2 == 0 for n in window
    )
  assert weights.min() >= sliding_window.MIN_GAUSSIAN_WEIGHT


def test_gaussian_map_values_by_hand():
  # sigma = 0.125 · 8 = 1 along the first axis; offsets ±0.5, ±1.5, ...
  weights = sliding_window.importance_map((8, 1, 1))[:, 0, 0]
  offsets = np.arange(8) - 3.5
  expected = np.maximum(np.exp(-(offsets**2) / 2.0), 1e-3)
  np.testing.assert_allclose(weights, expected, rtol=1e-6)
  # Per-axis sigma_scale: a wider Gaussian is flatter.
  wide = sliding_window.importance_map((8, 1, 1), sigma_scale=(0.5, 1, 1))
  np.testing.assert_allclose(
    wide[:, 0, 0], np.exp(-(offsets**2) / (2.0 * 16.0)), rtol=1e-6
  )
  # Corners of a 3-D map are clamped at MIN_GAUSSIAN_WEIGHT.
  cube = sliding_window.importance_map(16)
  assert cube[0, 0, 0] == np.float32(sliding_window.MIN_GAUSSIAN_WEIGHT)


def test_constant_map_is_ones():
  np.testing.assert_array_equal(
    sliding_window.importance_map((3, 4, 5), blending='constant'),
    np.ones((3, 4, 5)),
  )


# Thresholds and labels.


@pytest.mark.parametrize('layout', [layouts.BRATS2018, layouts.BRATS2023])
def test_labels_round_trip_through_probabilities(layout):
  rng = np.random.default_rng(0)
  labels = rng.choice(np.array(layout.labels, np.uint8), size=(6, 5, 4))
  regions = layouts.labels_to_regions(labels, layout)
  # Confident but not saturated probabilities on the right side of 0.5.
  probabilities = np.where(regions, 0.8, 0.2).astype(np.float32)
  result = sliding_window.probabilities_to_labels(probabilities, layout.name)
  assert result.dtype == np.uint8
  np.testing.assert_array_equal(result, labels)
  np.testing.assert_array_equal(
    sliding_window.probabilities_to_labels(probabilities, layout), labels
  )


def test_threshold_is_inclusive_and_configurable():
  p = np.array([0.2, 0.5, 0.7, 0.9])
  np.testing.assert_array_equal(
    sliding_window.threshold(p), [False, True, True, True]
  )
  np.testing.assert_array_equal(
    sliding_window.threshold(p, 0.8), [False, False, False, True]
  )


def test_labels_follow_the_nesting_rule():
  # ET without TC/WT is still enhancing; TC without WT still necrotic.
  probabilities = np.array(
    [[0.0, 0.0, 0.9], [0.9, 0.0, 0.0], [0.0, 0.9, 0.0], [0.1, 0.1, 0.1]]
  )
  np.testing.assert_array_equal(
    sliding_window.probabilities_to_labels(probabilities, 'brats2018'),
    [4, 1, 2, 0],
  )
  np.testing.assert_array_equal(
    sliding_window.probabilities_to_labels(
      probabilities, 'brats2023', threshold=0.95
    ),
    [0, 0, 0, 0],
  )


# Argument and output checks.


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'window': (8, 8)}, 'window must be 3 positive integers'),
    ({'window': 0}, 'window must be 3 positive integers'),
    ({'window': (8, 8, 2.5)}, 'window must be 3 positive integers'),
    ({'overlap': 1.0}, r'overlap must be in \[0, 1\). Found 1.0.'),
    ({'overlap': -0.1}, 'overlap must be in'),
    ({'blending': 'mean'}, "blending must be one of.*Found 'mean'"),
    ({'sigma_scale': 0}, 'sigma_scale must be one positive number'),
    ({'sigma_scale': (1, 1)}, 'sigma_scale must be one positive number'),
    ({'batch_size': 0}, 'batch_size must be a positive integer. Found 0.'),
    ({'pad_mode': 'wrap'}, "pad_mode must be one of.*Found 'wrap'"),
  ],
)
def test_bad_arguments(kwargs, message):
  arguments = {'window': 4, **kwargs}
  with pytest.raises(ValueError, match=message):
    sliding_window.sliding_window_inference(
      _per_voxel, _image((4, 4, 4)), **arguments
    )


@pytest.mark.parametrize(
  'image, message',
  [
    (np.zeros((4, 4, 4)), r'image must have shape \[D, H, W, C\]'),
    (np.zeros((4, 0, 4, 4)), 'image must have shape'),
    (np.full((2, 2, 2, 4), np.nan), 'image must be finite. Found nan at'),
  ],
)
def test_bad_images(image, message):
  with pytest.raises(ValueError, match=message):
    sliding_window.sliding_window_inference(_per_voxel, image, window=2)


@pytest.mark.parametrize(
  'fn, message',
  [
    (lambda b: b[0], r'predict_fn must return \[batch, d, h, w, K\]'),
    (lambda b: b[:, :2], r'Found shape \(1, 2, 4, 4, 4\)'),
    (lambda b: b * np.nan, 'predict_fn must return finite values'),
  ],
)
def test_bad_predictions(fn, message):
  with pytest.raises(ValueError, match=message):
    sliding_window.sliding_window_inference(fn, _image((4, 4, 4)), window=4)


def test_threshold_must_be_a_probability():
  with pytest.raises(ValueError, match=r'threshold must be in \(0, 1\)'):
    sliding_window.threshold(np.zeros(3), 1.0)
  with pytest.raises(ValueError, match='layout must be one of'):
    sliding_window.probabilities_to_labels(np.zeros((2, 3)), 'brats2020')
