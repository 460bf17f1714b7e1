"""Tests of tff_brats.data.pipeline (pure TF, no TFF)."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from tff_brats.data import layouts
from tff_brats.data import pipeline
from tff_brats.data import records

WT = 1


def _seed(i):
  return tf.constant([i, 7], tf.int64)


def _coordinate_volume(shape, channels):
  """Every voxel holds a value unique to its (d, h, w, c) position."""
  return np.arange(np.prod(shape) * channels, dtype=np.float32).reshape(
    *shape, channels
  ) + np.float32(1.0)


def _single_voxel_tumour(shape, voxel):
  regions = np.zeros((*shape, 3), np.float32)
  regions[(*voxel, WT)] = 1.0
  return regions


def _batches(dataset):
  return [(image.numpy(), regions.numpy()) for image, regions in dataset]


def _assert_batches_equal(a, b):
  assert len(a) == len(b) > 0
  for (image_a, regions_a), (image_b, regions_b) in zip(a, b, strict=True):
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(regions_a, regions_b)


def _batches_differ(a, b):
  return any(not np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """Two clients: 'a' has 3 cases in 2 shards, 'b' 2 cases (one small)."""
  root = tmp_path_factory.mktemp('prepared')
  return testing_utils.write_prepared_folder(
    str(root),
    {
      'a': [(16, 16, 16), (20, 18, 16), (16, 20, 18)],
      'b': [(18, 16, 16), (6, 10, 7)],
    },
    shards_per_client=2,
  )


class TestZscore:
  def test_hand_computed_values(self):
    image = np.zeros((1, 1, 4, 2), np.float32)
    image[0, 0, :, 0] = [0.0, 1.0, 2.0, 3.0]  # brain 1, 2, 3: mean 2
    image[0, 0, :, 1] = [4.0, 0.0, 0.0, 8.0]  # brain 4, 8: mean 6, std 2
    out = pipeline.normalize_intensity(image).numpy()
    s = np.sqrt(2.0 / 3.0)  # population std of (1, 2, 3)
    np.testing.assert_allclose(out[0, 0, :, 0], [0.0, -1 / s, 0.0, 1 / s])
    np.testing.assert_allclose(out[0, 0, :, 1], [-1.0, 0.0, 0.0, 1.0])
    mean, std = pipeline.zscore_statistics(image)
    np.testing.assert_allclose(mean, [2.0, 6.0])
    np.testing.assert_allclose(std, [s, 2.0])

  def test_brain_voxels_have_zero_mean_unit_std_and_zeros_stay(self):
    image, _ = testing_utils.make_case((16, 16, 16), seed=3)
    out = pipeline.normalize_intensity(image).numpy()
    for c in range(records.NUM_MODALITIES):
      brain = image[..., c] != 0
      assert 0 < brain.sum() < brain.size
      np.testing.assert_allclose(out[..., c][brain].mean(), 0.0, atol=1e-5)
      np.testing.assert_allclose(out[..., c][brain].std(), 1.0, rtol=1e-5)
      assert np.all(out[..., c][~brain] == 0.0)

  def test_constant_and_empty_channels_are_safe(self):
    image = np.zeros((16, 16, 16, 4), np.float32)
    image[2:14, 2:14, 2:14, 0] = 123.456  # constant brain
    image[..., 1] = np.random.default_rng(0).normal(size=(16, 16, 16)) + 9
    # channel 2 and 3: no brain voxel at all
    out = pipeline.normalize_intensity(image).numpy()
    assert np.all(np.isfinite(out))
    brain = image[..., 0] != 0
    assert np.all(out[..., 0] == 0.0)
    assert np.all(out[..., 0][~brain] == 0.0)
    assert np.all(out[..., 2:] == 0.0)
    _, std = pipeline.zscore_statistics(image)
    np.testing.assert_array_equal(std.numpy()[[0, 2, 3]], [1.0, 1.0, 1.0])


class TestPadAndCrop:
  def test_pad_to_size_centres_the_volume(self):
    image = _coordinate_volume((3, 5, 7), 4)
    regions = np.ones((3, 5, 7, 3), np.float32)
    padded_image, padded_regions = pipeline.pad_to_size(
      image, regions, (4, 4, 10)
    )
    assert padded_image.shape == (4, 5, 10, 4)
    assert padded_regions.shape == (4, 5, 10, 3)
    # Padding (1, 0, 3): before = (0, 0, 1), after = (1, 0, 2).
    np.testing.assert_array_equal(padded_image[:3, :, 1:8], image)
    assert padded_image.numpy().sum() == image.sum()
    assert padded_regions.numpy().sum() == regions.sum()

  def test_random_crop_is_an_aligned_slice(self):
    shape = (12, 10, 14)
    image = _coordinate_volume(shape, 4)
    regions = _coordinate_volume(shape, 3)
    starts = set()
    for i in range(20):
      crop_image, crop_regions = pipeline.random_crop(
        image, regions, (4, 5, 6), _seed(i)
      )
      assert crop_image.shape == (4, 5, 6, 4)
      assert crop_regions.shape == (4, 5, 6, 3)
      start = np.argwhere(image == crop_image.numpy()[0, 0, 0, 0])[0][:3]
      d, h, w = start
      np.testing.assert_array_equal(
        crop_image, image[d : d + 4, h : h + 5, w : w + 6]
      )
      np.testing.assert_array_equal(
        crop_regions, regions[d : d + 4, h : h + 5, w : w + 6]
      )
      starts.add(tuple(start))
    # 20 draws from 9*6*9 corners: all equal only if the corner ignored the
    # seed (odds of a real collision of all 20 are < 1e-40).
    assert len(starts) > 1

  @pytest.mark.parametrize('voxel', [(0, 0, 0), (23, 23, 23), (3, 20, 12)])
  def test_tumour_centred_crop_contains_the_tumour(self, voxel):
    shape = (24, 24, 24)
    image = np.ones((*shape, 4), np.float32)
    regions = _single_voxel_tumour(shape, voxel)
    for i in range(20):
      _, crop_regions = pipeline.random_crop(
        image, regions, (8, 8, 8), _seed(i), tumour_crop_probability=1.0
      )
      assert crop_regions.numpy()[..., WT].sum() == 1.0

  def test_tumour_crop_probability_is_respected(self):
    # A one-voxel tumour in a corner: a uniform 8³ crop of 24³ contains it
    # only at corner (0, 0, 0), odds 1/17³. With p = 0.5 the count over 200
    # seeds is ~ Binomial(200, 0.5): outside [70, 130] with odds < 3e-5.
    shape = (24, 24, 24)
    image = np.ones((*shape, 4), np.float32)
    regions = _single_voxel_tumour(shape, (0, 0, 0))

    def hits(probability):
      # One graph for the 200 seeds (a tenth of the time of eager calls).
      @tf.function(input_signature=[tf.TensorSpec([2], tf.int64)])
      def tumour_voxels(seed):
        _, crop = pipeline.random_crop(
          image, regions, (8, 8, 8), seed, probability
        )
        return tf.reduce_sum(crop[..., WT])

      return sum(int(tumour_voxels(_seed(i)) > 0) for i in range(200))

    assert hits(0.0) <= 2  # odds of 3 or more hits: < 1e-4
    assert 70 <= hits(0.5) <= 130

  def test_tumour_crop_without_tumour_is_uniform(self):
    image = np.ones((12, 12, 12, 4), np.float32)
    regions = np.zeros((12, 12, 12, 3), np.float32)
    crop_image, _ = pipeline.random_crop(
      image, regions, (4, 4, 4), _seed(0), tumour_crop_probability=1.0
    )
    assert crop_image.shape == (4, 4, 4, 4)

  def test_sample_crop_start_stays_inside(self):
    shape = tf.constant([10, 12, 9])
    tumour = tf.constant([[9, 0, 8], [0, 11, 4]])
    for i in range(50):
      start = pipeline.sample_crop_start(
        shape, (4, 6, 9), tumour, _seed(i), 0.5
      ).numpy()
      assert np.all(start >= 0)
      assert np.all(start + np.array([4, 6, 9]) <= shape.numpy())

  def test_small_volume_is_padded_then_cropped(self):
    image = _coordinate_volume((5, 6, 7), 4)
    regions = np.zeros((5, 6, 7, 3), np.float32)
    regions[2, 3, 4] = 1.0
    crop_image, crop_regions = pipeline.random_crop(
      image, regions, (8, 8, 8), _seed(0)
    )
    assert crop_image.shape == (8, 8, 8, 4)
    # The padded volume is exactly the crop, so nothing is lost.
    assert crop_image.numpy().sum() == image.sum()
    assert crop_regions.numpy().sum() == 3.0
    # Padding (3, 2, 1): before = (1, 1, 0).
    np.testing.assert_array_equal(crop_image.numpy()[1:6, 1:7, 0:7], image)

  def test_partly_small_volume(self):
    image = _coordinate_volume((5, 20, 20), 4)
    regions = np.zeros((5, 20, 20, 3), np.float32)
    crop_image, _ = pipeline.random_crop(image, regions, (8, 8, 8), _seed(1))
    assert crop_image.shape == (8, 8, 8, 4)
    assert np.all(crop_image.numpy()[:1] == 0.0)  # padding before d
    assert np.all(crop_image.numpy()[1:6] > 0.0)


class TestFlip:
  def test_flipping_twice_with_the_same_seed_is_identity(self):
    image = _coordinate_volume((4, 5, 6), 4)
    regions = _coordinate_volume((4, 5, 6), 3)
    changed = 0
    for i in range(10):
      once = pipeline.random_flip(image, regions, _seed(i))
      twice = pipeline.random_flip(*once, _seed(i))
      np.testing.assert_array_equal(twice[0], image)
      np.testing.assert_array_equal(twice[1], regions)
      changed += int(not np.array_equal(once[0], image))
    # All 10 seeds flipping no axis has odds (1/8)^10 < 1e-9.
    assert changed > 0

  def test_image_and_regions_flip_together_on_each_axis(self):
    shape = (4, 5, 6)
    marker = (1, 3, 4)
    image = np.zeros((*shape, 4), np.float32)
    image[marker] = 1.0
    regions = np.zeros((*shape, 3), np.float32)
    regions[marker] = 1.0
    flipped_axes = set()
    for i in range(100):
      flipped_image, flipped_regions = pipeline.random_flip(
        image, regions, _seed(i)
      )
      image_at = np.argwhere(flipped_image.numpy()[..., 0])[0]
      regions_at = np.argwhere(flipped_regions.numpy()[..., 0])[0]
      np.testing.assert_array_equal(image_at, regions_at)
      flips = tuple(
        bool(image_at[a] != marker[a]) for a in range(3)
      )  # a flipped axis moves the marker to n - 1 - p
      for a in range(3):
        assert image_at[a] in (marker[a], shape[a] - 1 - marker[a])
      flipped_axes.add(flips)
    # Each of the 8 flip combinations has p = 1/8 per seed; one of them
    # missing from 100 seeds has odds < 8 * (7/8)^100 < 1e-5.
    assert len(flipped_axes) == 8


class TestIntensity:
  def test_scale_and_shift_bounds(self):
    # Voxels 1 and 2 of each channel give y1 = (1 + u1) + u2 and
    # y2 = 2 (1 + u1) + u2, so u1 = y2 - y1 - 1 and u2 = 2 y1 - y2.
    image = np.ones((2, 1, 1, 4), np.float32)
    image[1] = 2.0
    scales, shifts = [], []
    for i in range(100):
      out = pipeline.random_intensity(image, _seed(i)).numpy()
      scales.append(out[1, 0, 0] - out[0, 0, 0] - 1.0)
      shifts.append(2.0 * out[0, 0, 0] - out[1, 0, 0])
    scales, shifts = np.array(scales), np.array(shifts)
    tol = 1e-5
    assert np.all(np.abs(scales) <= 0.1 + tol)
    assert np.all(np.abs(shifts) <= 0.1 + tol)
    # U(-0.1, 0.1) over 400 draws: max below 0.05 (or min above -0.05)
    # has odds 0.75^400 < 1e-49.
    for values in (scales, shifts):
      assert values.max() > 0.05 and values.min() < -0.05
    # Per channel: the four channels of one call differ.
    assert np.all(np.std(scales, axis=1) > 0)

  def test_zero_range_is_identity(self):
    image = _coordinate_volume((2, 3, 4), 4)
    out = pipeline.random_intensity(
      image, _seed(0), scale_factor=0.0, shift_offset=0.0
    )
    np.testing.assert_array_equal(out, image)

  @pytest.mark.parametrize(
    'kwargs, message',
    [
      (
        {'scale_factor': -0.1},
        'scale_factor must be a non-negative number. Found -0.1.',
      ),
      (
        {'shift_offset': 'x'},
        "shift_offset must be a non-negative number. Found 'x'.",
      ),
      (
        {'shift_offset': float('nan')},
        'shift_offset must be a non-negative number. Found nan.',
      ),
    ],
  )
  def test_bad_ranges(self, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
      pipeline.random_intensity(np.ones((1, 1, 1, 4)), _seed(0), **kwargs)


class TestTrainingDataset:
  def test_batch_shapes_dtypes_and_count(self, folder):
    dataset = pipeline.make_training_dataset(
      folder.shard_paths('a'),
      crop_size=(8, 10, 12),
      batch_size=2,
      crops_per_case=3,
      seed=0,
    )
    assert dataset.element_spec == pipeline.training_element_spec(
      (8, 10, 12), 2
    )
    batches = _batches(dataset)
    # 3 cases x 3 crops = 9 crops; the partial last batch is dropped.
    assert len(batches) == 4
    for image, regions in batches:
      assert image.shape == (2, 8, 10, 12, 4) and image.dtype == np.float32
      assert regions.shape == (2, 8, 10, 12, 3)
      assert regions.dtype == np.float32
      assert set(np.unique(regions)) <= {0.0, 1.0}

  def test_crops_are_normalised_aligned_slices_without_augmentation(self):
    shape = (10, 12, 14)
    image = _coordinate_volume(shape, 4)  # all non-zero, all distinct
    regions = (_coordinate_volume(shape, 3) % 3 == 0).astype(np.float32)
    cases = tf.data.Dataset.from_tensors({'image': image, 'regions': regions})
    normalised = pipeline.normalize_intensity(image).numpy()
    dataset = pipeline.make_training_dataset_from_cases(
      cases,
      crop_size=(4, 5, 6),
      batch_size=1,
      crops_per_case=5,
      augment=False,
      seed=1,
    )
    batches = _batches(dataset)
    assert len(batches) == 5
    for crop_image, crop_regions in batches:
      d, h, w = np.argwhere(normalised == crop_image[0, 0, 0, 0, 0])[0][:3]
      np.testing.assert_array_equal(
        crop_image[0], normalised[d : d + 4, h : h + 5, w : w + 6]
      )
      np.testing.assert_array_equal(
        crop_regions[0], regions[d : d + 4, h : h + 5, w : w + 6]
      )

  def test_tumour_crops_contain_tumour(self, folder):
    dataset = pipeline.make_training_dataset(
      folder.shard_paths('a'),
      crop_size=(4, 4, 4),
      batch_size=1,
      crops_per_case=4,
      tumour_crop_probability=1.0,
      seed=2,
    )
    for _, regions in dataset:
      assert regions.numpy()[..., WT].sum() > 0

  def test_small_case_is_padded(self, folder):
    # Client b's second case is 6x10x7, smaller than the crop.
    dataset = pipeline.make_training_dataset(
      folder.shard_paths('b'),
      crop_size=(12, 12, 12),
      batch_size=1,
      shuffle=False,
      augment=False,
      seed=0,
    )
    batches = _batches(dataset)
    assert [b[0].shape for b in batches] == [(1, 12, 12, 12, 4)] * 2

  def test_same_seed_same_batches_with_parallel_map(self, folder):
    def build(seed):
      return pipeline.make_training_dataset(
        folder.all_client_shard_paths(),
        crop_size=(8, 8, 8),
        batch_size=2,
        crops_per_case=2,
        seed=seed,
        num_parallel_calls=4,
      )

    first = _batches(build(5))
    _assert_batches_equal(first, _batches(build(5)))
    # Continuous random intensities: two seeds agreeing everywhere has odds
    # of order 2^-23 per value.
    assert _batches_differ(first, _batches(build(6)))

  def test_tensor_key_is_the_base_seed(self, folder):
    def build(seed):
      return pipeline.make_training_dataset(
        folder.all_client_shard_paths(),
        crop_size=(8, 8, 8),
        batch_size=1,
        seed=seed,
      )

    # An int seed s is the key [0, s]; a key computed in a graph gives the
    # same batches as the int it stands for.
    seven = _batches(build(7))
    _assert_batches_equal(seven, _batches(build(tf.constant([0, 7], tf.int64))))
    assert _batches_differ(
      seven, _batches(build(tf.constant([1, 7], tf.int64)))
    )
    with pytest.raises(ValueError, match=r'int64 \[2\] tensor. Found a int32'):
      build(tf.constant([0, 7], tf.int32))

  def test_every_crop_gets_its_own_randomness(self):
    # One case twice, two crops each: four crops from four seeds. Two of
    # them equal by chance: odds of order 2^-23 (continuous intensities).
    image, regions = testing_utils.make_case((12, 12, 12), seed=0)
    case = {'image': image, 'regions': regions.astype(np.float32)}
    cases = tf.data.Dataset.from_tensors(case).repeat(2)
    crops = [
      image
      for image, _ in _batches(
        pipeline.make_training_dataset_from_cases(
          cases,
          crop_size=(12, 12, 12),
          batch_size=1,
          crops_per_case=2,
          seed=0,
          shuffle=False,
        )
      )
    ]
    assert len(crops) == 4
    for i in range(4):
      for j in range(i):
        assert not np.array_equal(crops[i], crops[j])

  def test_shuffle_changes_the_case_order(self, folder):
    # Crops larger than every case hold the whole (padded) case; its sum
    # of regions identifies it.
    paths = folder.shard_paths('a')
    options = dict(crop_size=(24, 24, 24), batch_size=1, augment=False)

    def region_sums(dataset):
      return tuple(int(r.sum()) for _, r in _batches(dataset))

    unshuffled = region_sums(
      pipeline.make_training_dataset(paths, shuffle=False, seed=0, **options)
    )
    assert len(set(unshuffled)) == 3

    def orders_of_seeds_0_to_9():
      # The seeds as the keys [0, s] they stand for (see
      # test_tensor_key_is_the_base_seed), flat-mapped into one dataset:
      # tf.data builds the pipeline's functions once instead of ten times.
      def shuffled(s):
        key = tf.stack([tf.constant(0, tf.int64), s])
        return pipeline.make_training_dataset(
          tf.constant(paths), shuffle=True, seed=key, **options
        )

      sums = region_sums(tf.data.Dataset.range(10).flat_map(shuffled))
      assert len(sums) == 10 * 3
      return [sums[i : i + 3] for i in range(0, len(sums), 3)]

    tf.random.set_seed(1)
    orders = orders_of_seeds_0_to_9()
    assert all(sorted(o) == sorted(unshuffled) for o in orders)
    # The record block (8) holds all 3 cases, so each of the 6 orders has
    # p = 1/6; 10 seeds all giving one order has odds 6 * (1/6)^10 < 1e-7.
    assert len(set(orders)) > 1
    # Only the seed decides the order, not TensorFlow's global seed (the TFF
    # worker and the driver process have different global seeds).
    tf.random.set_seed(2)
    assert orders_of_seeds_0_to_9() == orders

  def test_seed_none_is_fresh_each_time(self, folder):
    def build():
      return pipeline.make_training_dataset(
        folder.shard_paths('a'), crop_size=(8, 8, 8), batch_size=1
      )

    assert _batches_differ(_batches(build()), _batches(build()))

  def test_seed_none_is_fresh_each_time_a_graph_runs(self, folder):
    # A graph traced once (as a TFF computation is) draws a fresh base
    # seed on every call. Continuous intensities: equal sums by chance
    # have odds of order 2^-23.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def image_sum(paths):
      dataset = pipeline.make_training_dataset(
        paths, crop_size=(8, 8, 8), batch_size=1
      )
      return dataset.reduce(0.0, lambda s, b: s + tf.reduce_sum(b[0]))

    paths = tf.constant(folder.shard_paths('a'))
    assert float(image_sum(paths)) != float(image_sum(paths))

  def test_shard_paths_as_tensor_in_a_graph(self, folder):
    kwargs = dict(crop_size=(8, 8, 8), batch_size=1, crops_per_case=2, seed=3)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def image_sums(paths):
      dataset = pipeline.make_training_dataset(paths, **kwargs)
      return dataset.reduce(
        tf.zeros([0]),
        lambda s, b: tf.concat([s, [tf.reduce_sum(b[0])]], axis=0),
      )

    paths = folder.shard_paths('a')
    expected = [
      image.sum()
      for image, _ in _batches(pipeline.make_training_dataset(paths, **kwargs))
    ]
    np.testing.assert_allclose(
      image_sums(tf.constant(paths)), expected, rtol=1e-5
    )

  def test_empty_tensor_of_paths_fails_at_runtime(self):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def count(paths):
      dataset = pipeline.make_training_dataset(paths, crop_size=4, batch_size=1)
      return dataset.reduce(0, lambda s, _: s + 1)

    with pytest.raises(tf.errors.InvalidArgumentError, match='not be empty'):
      count(tf.constant([], tf.string))

  def test_in_memory_cases_give_the_same_batches(self, folder):
    kwargs = dict(
      crop_size=(8, 8, 8),
      batch_size=1,
      crops_per_case=2,
      seed=4,
      shuffle=False,
    )
    from_shards = _batches(
      pipeline.make_training_dataset(folder.shard_paths('a'), **kwargs)
    )
    raw = tf.data.TFRecordDataset(folder.shard_paths('a')).map(
      records.parse_case
    )
    from_memory = _batches(
      pipeline.make_training_dataset_from_cases(raw, **kwargs)
    )
    _assert_batches_equal(from_shards, from_memory)

  def test_centralized_dataset_pools_all_clients(self, folder):
    kwargs = dict(crop_size=(8, 8, 8), batch_size=1, seed=9)
    pooled = _batches(pipeline.make_centralized_dataset(folder, **kwargs))
    assert len(pooled) == 5  # 3 + 2 cases
    _assert_batches_equal(
      pooled,
      _batches(
        pipeline.make_training_dataset(
          folder.all_client_shard_paths(), **kwargs
        )
      ),
    )

  @pytest.mark.parametrize(
    'kwargs, message',
    [
      ({'crop_size': (0, 8, 8)}, 'crop_size must be 3 positive integers'),
      ({'crop_size': (8, 8)}, 'crop_size must be 3 positive integers'),
      ({'crop_size': 8.5}, r'crop_size .* Found 8.5'),
      ({'crop_size': True}, 'crop_size must be'),
      ({'batch_size': 0}, 'batch_size must be a positive integer. Found 0.'),
      ({'batch_size': 1.5}, 'batch_size must be a positive integer'),
      (
        {'tumour_crop_probability': 1.5},
        r'tumour_crop_probability must be in \[0, 1\]\. Found 1\.5\.',
      ),
      (
        {'tumour_crop_probability': -0.1},
        r'tumour_crop_probability must be in \[0, 1\]\. Found -0\.1\.',
      ),
      (
        {'tumour_crop_probability': '0.5'},
        r"tumour_crop_probability must be in \[0, 1\]\. Found '0\.5'\.",
      ),
      ({'crops_per_case': 0}, 'crops_per_case must be a positive integer'),
      ({'shuffle_buffer_size': 0}, 'shuffle_buffer_size must be'),
      ({'seed': -1}, 'seed must be None or a non-negative'),
      ({'seed': 1.0}, 'seed must be None or a non-negative'),
      ({'num_parallel_calls': 0}, 'num_parallel_calls must be'),
      ({'prefetch': -3}, 'prefetch must be'),
    ],
  )
  def test_bad_arguments(self, folder, kwargs, message):
    arguments = dict(crop_size=(8, 8, 8), batch_size=1)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
      pipeline.make_training_dataset(folder.shard_paths('a'), **arguments)

  @pytest.mark.parametrize(
    'shard_paths, message',
    [
      ([], r'shard_paths must not be empty. Found \[\].'),
      ('a.tfrecord', 'shard_paths must be a list of paths'),
      ([1, 2], 'shard_paths must hold path strings'),
      (tf.constant([], tf.string), 'shard_paths must not be empty'),
      (tf.constant([1, 2]), 'shard_paths must be a 1-D tf.string tensor'),
      (tf.constant('a.tfrecord'), 'shard_paths must be a 1-D tf.string'),
    ],
  )
  def test_bad_shard_paths(self, shard_paths, message):
    with pytest.raises(ValueError, match=message):
      pipeline.make_training_dataset(shard_paths, crop_size=8, batch_size=1)


class TestEvaluationDataset:
  def test_whole_normalised_cases_in_shard_order(self, folder):
    cases = list(pipeline.make_evaluation_dataset(folder.shard_paths('a')))
    assert [c['case_id'].numpy().decode() for c in cases] == list(
      folder.clients['a']
    )
    raw = [
      records.parse_case(r)
      for r in tf.data.TFRecordDataset(folder.shard_paths('a'))
    ]
    for case, original in zip(cases, raw, strict=True):
      assert set(case) == {'case_id', 'image', 'regions'}
      assert case['image'].shape == original['image'].shape
      np.testing.assert_allclose(
        case['image'], pipeline.normalize_intensity(original['image'])
      )
      np.testing.assert_array_equal(case['regions'], original['regions'])

  def test_bad_arguments(self, folder):
    with pytest.raises(ValueError, match='shard_paths must not be empty'):
      pipeline.make_evaluation_dataset([])
    with pytest.raises(ValueError, match='prefetch must be'):
      pipeline.make_evaluation_dataset(folder.shard_paths('a'), prefetch=-5)


def test_case_to_crops_with_packed_regions_equals_float_regions():
  """Cropping the packed mask and unpacking the crop is the same crop."""
  rng = np.random.default_rng(5)
  image = rng.uniform(1, 100, size=(12, 10, 14, 4)).astype(np.float32)
  labels = np.zeros((12, 10, 14), np.int64)
  labels[3:6, 4:7, 5:9] = 2
  labels[4, 5, 6] = 4
  regions = layouts.labels_to_regions(labels, layouts.BRATS2018)
  packed = layouts.pack_regions(regions)[..., np.newaxis]
  kwargs = dict(
    crop_size=(8, 8, 8), crops_per_case=3, tumour_crop_probability=0.5
  )
  seed = tf.constant([3, 9], tf.int64)
  from_float = pipeline.case_to_crops(
    image, regions.astype(np.float32), seed, **kwargs
  )
  from_packed = pipeline.case_to_crops(image, packed, seed, **kwargs)
  for a, b in zip(from_float, from_packed, strict=True):
    np.testing.assert_array_equal(a, b)
  assert from_packed[1].dtype == tf.float32
  assert from_packed[1].shape == (3, 8, 8, 8, 3)
