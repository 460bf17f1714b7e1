"""Tests of tff_brats.evaluation.scoring on hand-made masks."""

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import distance

from tff_brats.data import layouts
from tff_brats.evaluation import scoring


def _box(shape, *slices):
  mask = np.zeros(shape, bool)
  mask[slices] = True
  return mask


def _blobs(shape, seed, level):
  """Irregular random blobs: smoothed noise above `level`."""
  noise = np.random.default_rng(seed).normal(size=shape)
  return ndimage.gaussian_filter(noise, 2.0) > level


def _surface(mask, connectivity):
  structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
  return mask & ~ndimage.binary_erosion(mask, structure)


def _medpy_hd95(prediction, truth, spacing, connectivity=1):
  """MedPy's `hd95` over the whole volume (no bounding box)."""
  prediction_surface = _surface(prediction, connectivity)
  truth_surface = _surface(truth, connectivity)
  to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
  to_prediction = ndimage.distance_transform_edt(
    ~prediction_surface, sampling=spacing
  )
  return np.percentile(
    np.hstack((to_truth[prediction_surface], to_prediction[truth_surface])),
    95,
  )


def _brute_force_hd95(prediction, truth, spacing, connectivity=1):
  """All pairwise surface distances (no distance transform)."""
  a = np.argwhere(_surface(prediction, connectivity)) * np.asarray(spacing)
  b = np.argwhere(_surface(truth, connectivity)) * np.asarray(spacing)
  pairwise = distance.cdist(a, b)
  return np.percentile(
    np.hstack((pairwise.min(axis=1), pairwise.min(axis=0))), 95
  )


class TestDice:
  def test_overlapping_boxes(self):
    # Two 4x4x4 boxes overlapping in 2x4x4: Dice = 2 * 32 / (64 + 64).
    a = _box((10, 10, 10), slice(2, 6), slice(2, 6), slice(2, 6))
    b = _box((10, 10, 10), slice(4, 8), slice(2, 6), slice(2, 6))
    assert scoring.dice(a, b) == 0.5
    assert scoring.dice(b, a) == 0.5
    assert scoring.dice(a, a) == 1.0

  def test_different_sizes(self):
    # 8 voxels inside 27: 2 * 8 / (8 + 27).
    small = _box((5, 5, 5), slice(1, 3), slice(1, 3), slice(1, 3))
    large = _box((5, 5, 5), slice(1, 4), slice(1, 4), slice(1, 4))
    assert scoring.dice(small, large) == pytest.approx(16 / 35)

  def test_empty_conventions(self):
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    assert scoring.dice(empty, empty) == 1.0
    assert scoring.dice(empty, full) == 0.0
    assert scoring.dice(full, empty) == 0.0

  def test_accepts_zero_one_integers_and_floats(self):
    a = _box((6, 6, 6), slice(0, 3), slice(0, 6), slice(0, 6))
    b = _box((6, 6, 6), slice(1, 4), slice(0, 6), slice(0, 6))
    assert scoring.dice(a.astype(np.uint8), b.astype(np.float32)) == (
      pytest.approx(2 / 3)
    )

  @pytest.mark.parametrize(
    'prediction, message',
    [
      (np.full((2, 2, 2), 2), 'prediction must be a boolean .* Found value 2'),
      (np.full((2, 2, 2), 0.7), 'prediction must be a boolean .* 0.7'),
      (np.full((2, 2, 2), 'a'), 'prediction must be a boolean .* dtype'),
      (np.zeros((2, 2, 3), bool), 'truth must have the shape'),
    ],
  )
  def test_bad_masks(self, prediction, message):
    with pytest.raises(ValueError, match=message):
      scoring.dice(prediction, np.zeros((2, 2, 2), bool))


class TestHd95:
  def test_two_points_anisotropic_spacing(self):
    # Single voxels 4 apart along the last axis, spaced 2.5 mm: 10 mm.
    a = _box((5, 5, 10), 2, 2, 1)
    b = _box((5, 5, 10), 2, 2, 5)
    assert scoring.hd95(a, b, (1.0, 1.0, 2.5)) == pytest.approx(10.0)
    # The spacing of the other axes does not matter here.
    assert scoring.hd95(a, b, (3.0, 0.5, 2.5)) == pytest.approx(10.0)
    assert scoring.hd95(a, b, (2.5, 1.0, 1.0)) == pytest.approx(4.0)

  def test_points_apart_along_several_axes(self):
    a = _box((6, 6, 6), 0, 0, 0)
    b = _box((6, 6, 6), 3, 4, 0)
    # sqrt((3 * 2)^2 + (4 * 1.5)^2) = sqrt(72).
    assert scoring.hd95(a, b, (2.0, 1.5, 1.0)) == pytest.approx(math.sqrt(72))

  def test_shifted_cube(self):
    # A 10^3 cube and the same cube shifted by 3 voxels along axis 0, with
    # 2 mm along that axis and 1 mm along the others. Each surface has
    # 10^3 - 8^3 = 488 voxels (face neighbours, connectivity 1). Distances
    # of the first cube's surface to the second's, layer by layer (the other
    # direction mirrors them):
    #   bottom face (100 voxels): 3 voxels along axis 0 = 6 mm;
    #   side ring of the next two layers (36 each): 4 and 2 mm;
    #   side rings of layers 3..9 (252): 0, they lie on the other surface;
    #   top face interior (64): to the other cube's side faces in-plane,
    #   1, 2, 3, 4 mm for 28, 20, 12, 4 voxels (the other top is 6 mm away).
    # Sorted: 252 x 0, 28 x 1, 56 x 2, 12 x 3, 40 x 4, 100 x 6: more than 5%
    # of the 976 distances are 6 mm, so HD95 = 6 mm.
    shape = (24, 18, 18)
    a = _box(shape, slice(4, 14), slice(4, 14), slice(4, 14))
    b = _box(shape, slice(7, 17), slice(4, 14), slice(4, 14))
    assert scoring.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    # With 1 mm voxels: 3 mm (bottom face) and 116 of the 488 at 3 mm.
    assert scoring.hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)

  def test_ignores_the_farthest_five_percent(self):
    # A cube and the same cube plus one voxel 20 voxels away: every surface
    # distance is 0 except the outlier's (1 of 977), so HD95 is 0 while the
    # Hausdorff distance is 20 mm.
    cube = _box((40, 12, 12), slice(2, 10), slice(2, 10), slice(2, 10))
    with_outlier = cube.copy()
    with_outlier[29, 5, 5] = True
    assert scoring.hd95(with_outlier, cube, (1.0, 1.0, 1.0)) == 0.0
    assert _brute_force_hd95(with_outlier, cube, (1, 1, 1)) == 0.0

  def test_interpolates_between_distances(self):
    # Truth: one voxel; prediction: it and 19 others on a line at 1..19 mm
    # (a line is all surface). Distances: 20 from the prediction, 0..19,
    # and 1 from the truth, 0. numpy's 95th percentile of the 21 values
    # (0, 0, 1, ..., 19) sits at rank 19: 18 mm.
    truth = _box((24, 3, 3), 1, 1, 1)
    prediction = _box((24, 3, 3), slice(1, 21), 1, 1)
    assert scoring.hd95(prediction, truth, (1, 1, 1)) == pytest.approx(18.0)
    assert scoring.hd95(truth, prediction, (1, 1, 1)) == pytest.approx(18.0)

  @pytest.mark.parametrize('seed', [0, 1, 2])
  def test_symmetric(self, seed):
    a = _blobs((20, 24, 16), seed, 0.05)
    b = _blobs((20, 24, 16), seed + 10, 0.05)
    spacing = (1.0, 0.8, 2.5)
    assert scoring.hd95(a, b, spacing) == scoring.hd95(b, a, spacing)
    assert scoring.hd95(a, b, spacing) > 0

  def test_identical_masks(self):
    a = _blobs((12, 12, 12), 3, 0.0)
    assert scoring.hd95(a, a, (1, 1, 1)) == 0.0

  def test_empty_conventions(self):
    empty = np.zeros((8, 8, 8), bool)
    blob = _box((8, 8, 8), slice(2, 4), slice(2, 4), slice(2, 4))
    assert scoring.hd95(empty, empty, (1, 1, 1)) == 0.0
    assert scoring.hd95(empty, blob, (1, 1, 1)) == scoring.WORST_CASE_HD95_MM
    assert scoring.hd95(blob, empty, (1, 1, 1)) == scoring.WORST_CASE_HD95_MM

  def test_worst_case_is_the_brats_volume_diagonal(self):
    diagonal = math.sqrt(240**2 + 240**2 + 155**2)
    assert diagonal == pytest.approx(scoring.WORST_CASE_HD95_MM, abs=1e-5)

  @pytest.mark.parametrize('seed', range(4))
  @pytest.mark.parametrize('connectivity', [1, 3])
  def test_matches_pairwise_distances(self, seed, connectivity):
    a = _blobs((14, 12, 10), seed, 0.05)
    b = _blobs((14, 12, 10), seed + 100, 0.05)
    spacing = (1.2, 0.9, 2.0)
    expected = _brute_force_hd95(a, b, spacing, connectivity)
    assert scoring.hd95(
      a, b, spacing, connectivity=connectivity
    ) == pytest.approx(expected, rel=1e-12)

  def test_default_erodes_with_face_neighbours(self):
    # Surfaces from the 6-neighbour cross (MedPy's connectivity=1) and from
    # the full 3x3x3 cube give different HD95 on irregular blobs; the
    # default must be the cross.
    a = _blobs((16, 16, 16), 7, 0.0)
    b = _blobs((16, 16, 16), 8, 0.0)
    spacing = (1.0, 1.3, 0.7)
    cross = _brute_force_hd95(a, b, spacing, 1)
    cube = _brute_force_hd95(a, b, spacing, 3)
    assert cross != pytest.approx(cube)
    assert scoring.EROSION_CONNECTIVITY == 1
    assert scoring.hd95(a, b, spacing) == pytest.approx(cross, rel=1e-12)

  @pytest.mark.parametrize('seed', range(6))
  def test_bounding_box_gives_the_whole_volume_result(self, seed):
    shape = (40, 36, 30)
    spacing = (1.0, 0.9, 2.5)
    # Small blobs far from most of the volume, and (odd seeds) blobs cut by
    # the volume's edges, where erosion meets the border.
    level = 0.12 if seed % 2 == 0 else 0.06
    a = _blobs(shape, seed, level)
    b = _blobs(shape, seed + 50, level)
    if seed % 2:
      a[0, :5, :5] = b[-1, -5:, -5:] = True
    assert a.any() and b.any()
    expected = _medpy_hd95(a, b, spacing)
    assert expected > 0
    assert scoring.hd95(a, b, spacing) == pytest.approx(expected, rel=1e-12)

  @pytest.mark.parametrize('connectivity', [1, 2, 3])
  def test_scattered_false_positives_match_medpy(self, connectivity):
    # A prediction with isolated voxels scattered over the whole volume
    # (each one its own surface), a truth blob in one corner: the two masks
    # have different bounding boxes, and the k-d tree must give MedPy's
    # distance-transform result.
    rng = np.random.default_rng(connectivity)
    shape = (30, 34, 26)
    spacing = (1.2, 0.8, 3.0)
    truth = _blobs(shape, connectivity, 0.08)
    truth[:, 17:, :] = False
    prediction = _blobs(shape, connectivity + 10, 0.08)
    prediction |= rng.random(shape) < 0.01
    assert truth.any() and prediction.any()
    expected = _medpy_hd95(prediction, truth, spacing, connectivity)
    assert scoring.hd95(
      prediction, truth, spacing, connectivity=connectivity
    ) == pytest.approx(expected, rel=1e-12)

  def test_two_dimensional_masks(self):
    a = _box((6, 8), 1, 1)
    b = _box((6, 8), 1, 6)
    assert scoring.hd95(a, b, (1.0, 0.5)) == pytest.approx(2.5)

  @pytest.mark.parametrize(
    'spacing',
    [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (1, math.nan, 1), 1.0],
  )
  def test_bad_spacing(self, spacing):
    a = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match='spacing must be 3 positive numbers'):
      scoring.hd95(a, a, spacing)

  @pytest.mark.parametrize('connectivity', [0, 4, 1.5])
  def test_bad_connectivity(self, connectivity):
    a = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match=r'connectivity must be .* \[1, 3\]'):
      scoring.hd95(a, a, (1, 1, 1), connectivity=connectivity)


class TestScoreCase:
  def test_scores_every_region(self):
    shape = (12, 12, 12)
    truth = np.zeros((*shape, 3), bool)
    prediction = np.zeros((*shape, 3), bool)
    # TC: the 4^3 truth box against a prediction shifted by 2 along axis 0.
    truth[2:6, 2:6, 2:6, 0] = True
    prediction[4:8, 2:6, 2:6, 0] = True
    # WT: identical.
    truth[1:9, 1:9, 1:9, 1] = prediction[1:9, 1:9, 1:9, 1] = True
    # ET: absent in the truth, one voxel predicted.
    prediction[3, 3, 3, 2] = True
    scores = scoring.score_case(prediction, truth, (1.0, 1.0, 1.0))
    assert list(scores) == ['TC', 'WT', 'ET', 'mean']
    tc_hd95 = scoring.hd95(prediction[..., 0], truth[..., 0], (1, 1, 1))
    assert tc_hd95 == pytest.approx(2.0)
    assert scores['TC'] == {'dice': 0.5, 'hd95': pytest.approx(2.0)}
    assert scores['WT'] == {'dice': 1.0, 'hd95': 0.0}
    assert scores['ET'] == {'dice': 0.0, 'hd95': scoring.WORST_CASE_HD95_MM}
    assert scores['mean']['dice'] == pytest.approx(1.5 / 3)
    assert scores['mean']['hd95'] == pytest.approx(
      (2.0 + scoring.WORST_CASE_HD95_MM) / 3
    )
    assert all(
      type(value) is float for s in scores.values() for value in s.values()
    )

  def test_both_regions_empty(self):
    empty = np.zeros((5, 5, 5, 3), bool)
    scores = scoring.score_case(empty, empty, (1, 1, 1))
    for region in (*layouts.REGIONS, 'mean'):
      assert scores[region] == {'dice': 1.0, 'hd95': 0.0}

  def test_uses_spacing(self):
    truth = np.zeros((6, 6, 6, 3), bool)
    prediction = np.zeros((6, 6, 6, 3), bool)
    truth[1, 1, 1] = True
    prediction[1, 1, 4] = True
    scores = scoring.score_case(prediction, truth, (1.0, 1.0, 1.5))
    for region in layouts.REGIONS:
      assert scores[region]['hd95'] == pytest.approx(4.5)

  @pytest.mark.parametrize(
    'prediction_shape, truth_shape, spacing, message',
    [
      ((4, 4, 4, 2), (4, 4, 4, 2), (1, 1, 1), '3 channels'),
      ((4, 4, 4, 3), (4, 4, 5, 3), (1, 1, 1), 'truth_regions must have'),
      ((4, 4, 4, 3), (4, 4, 4, 3), (1, 1, 1, 1), 'spacing must be 3'),
    ],
  )
  def test_bad_arguments(self, prediction_shape, truth_shape, spacing, message):
    with pytest.raises(ValueError, match=message):
      scoring.score_case(
        np.zeros(prediction_shape, bool), np.zeros(truth_shape, bool), spacing
      )


class TestScoreLabels:
  @pytest.mark.parametrize('layout', [layouts.BRATS2018, layouts.BRATS2023])
  def test_matches_score_case_of_regions(self, layout):
    rng = np.random.default_rng(0)
    labels = np.array(layout.labels)
    truth = labels[rng.integers(0, 4, (10, 10, 10))]
    prediction = labels[rng.integers(0, 4, (10, 10, 10))]
    spacing = (1.0, 1.0, 1.2)
    expected = scoring.score_case(
      layouts.labels_to_regions(prediction, layout),
      layouts.labels_to_regions(truth, layout),
      spacing,
    )
    assert scoring.score_labels(prediction, truth, spacing, layout) == expected
    assert (
      scoring.score_labels(prediction, truth, spacing, layout.name) == expected
    )

  def test_regions_from_labels(self):
    # Truth: oedema around necrosis around enhancing; prediction: all oedema.
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:7, 1:7, 1:7] = 2
    truth[2:6, 2:6, 2:6] = 1
    truth[3:5, 3:5, 3:5] = 4
    prediction = np.where(truth > 0, 2, 0)
    scores = scoring.score_labels(prediction, truth, (1, 1, 1), 'brats2018')
    assert scores['WT'] == {'dice': 1.0, 'hd95': 0.0}
    assert scores['TC']['dice'] == 0.0
    assert scores['ET']['hd95'] == scoring.WORST_CASE_HD95_MM

  def test_label_outside_the_convention_is_an_error(self):
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r'truth_labels must .* Found \[3\]'):
      scoring.score_labels(labels * 0, labels, (1, 1, 1), layouts.BRATS2018)
    scoring.score_labels(labels * 0, labels, (1, 1, 1), layouts.BRATS2023)
    with pytest.raises(ValueError, match=r'prediction_labels .* Found \[3\]'):
      scoring.score_labels(labels, labels * 0, (1, 1, 1), 'brats2018')


class TestSummarize:
  def test_mean_median_std(self):
    cases = [
      {'TC': {'dice': 0.0, 'hd95': 1.0}},
      {'TC': {'dice': 0.5, 'hd95': 2.0}},
      {'TC': {'dice': 1.0, 'hd95': 6.0}},
    ]
    summary = scoring.summarize(cases)
    assert summary == {
      'dice_TC': {
        'mean': 0.5,
        'median': 0.5,
        'std': pytest.approx(math.sqrt(0.5 / 3)),
      },
      'hd95_TC': {
        'mean': 3.0,
        'median': 2.0,
        'std': pytest.approx(math.sqrt(14 / 3)),
      },
    }

  def test_flat_and_nested_agree(self):
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(4):
      truth = rng.random((6, 6, 6, 3)) > 0.6
      prediction = rng.random((6, 6, 6, 3)) > 0.6
      cases.append(scoring.score_case(prediction, truth, (1, 1, 1)))
    flat = [scoring.flatten_scores(c) for c in cases]
    assert scoring.summarize(cases) == scoring.summarize(flat)
    assert list(flat[0]) == [
      'dice_TC',
      'hd95_TC',
      'dice_WT',
      'hd95_WT',
      'dice_ET',
      'hd95_ET',
      'dice_mean',
      'hd95_mean',
    ]

  def test_empty_regions_give_finite_summaries(self):
    empty = np.zeros((6, 6, 6, 3), bool)
    one = empty.copy()
    one[2:4, 2:4, 2:4] = True
    cases = [
      scoring.score_case(empty, empty, (1, 1, 1)),
      scoring.score_case(empty, one, (1, 1, 1)),
      scoring.score_case(one, one, (1, 1, 1)),
    ]
    summary = scoring.summarize(cases)
    assert all(
      math.isfinite(v) for stats in summary.values() for v in stats.values()
    )
    assert summary['dice_ET'] == {
      'mean': pytest.approx(2 / 3),
      'median': 1.0,
      'std': pytest.approx(math.sqrt(2 / 9)),
    }
    assert summary['hd95_ET']['mean'] == pytest.approx(
      scoring.WORST_CASE_HD95_MM / 3
    )

  def test_single_case_has_zero_std(self):
    summary = scoring.summarize([{'dice_TC': 0.7}])
    assert summary == {'dice_TC': {'mean': 0.7, 'median': 0.7, 'std': 0.0}}

  @pytest.mark.parametrize(
    'cases, message',
    [
      ([], 'at least one case'),
      ({'case': {'dice_TC': 1.0}}, 'must be a sequence'),
      ([{'dice_TC': 1.0}, {'dice_WT': 1.0}], 'same scores for every case'),
      ([{'dice_TC': math.nan}], 'dice_TC must be a finite number'),
      ([{'TC': {'dice': None}}], 'TC/dice must be a finite number'),
    ],
  )
  def test_bad_arguments(self, cases, message):
    with pytest.raises(ValueError, match=message):
      scoring.summarize(cases)
