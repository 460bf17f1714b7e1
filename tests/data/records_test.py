"""Tests for tff_brats.data.records."""

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.data import layouts
from tff_brats.data import records


def _case(shape=(3, 4, 5)):
  rng = np.random.default_rng(1)
  image = rng.normal(size=(*shape, 4)).astype(np.float32)
  labels = rng.choice(layouts.BRATS2018.labels, size=shape)
  return image, layouts.labels_to_regions(labels, layouts.BRATS2018)


def test_round_trip():
  image, regions = _case()
  parsed = records.parse_case(
    tf.constant(records.encode_case('c-1', image, regions))
  )
  assert parsed['case_id'].numpy() == b'c-1'
  assert parsed['image'].dtype == tf.float32
  np.testing.assert_array_equal(parsed['image'], image)
  assert parsed['regions'].dtype == tf.float32
  np.testing.assert_array_equal(parsed['regions'], regions.astype(np.float32))


@pytest.mark.parametrize(
  'values, stored_as, bytes_per_value',
  [
    ([0, 1, -32768, 32767], b'int16', 2),  # whole numbers int16 holds
    ([0.0, 1.0, 812.0, -3.0], b'int16', 2),  # float-typed whole numbers
    ([0, 1, 32768, 7], b'float32', 4),  # uint16 beyond int16
    ([0.5, 1.0, 2.0, 3.0], b'float32', 4),  # fractional intensities
  ],
)
def test_image_is_stored_compactly_and_exactly(
  values, stored_as, bytes_per_value
):
  image = np.broadcast_to(np.array(values), (2, 1, 1, 4)).copy()
  image = image.astype(np.uint16 if max(values) == 32768 else np.float64)
  regions = np.zeros((2, 1, 1, 3), bool)
  serialized = records.encode_case('c', image, regions)
  example = tf.train.Example.FromString(serialized)
  assert (
    example.features.feature['image_dtype'].bytes_list.value[0] == stored_as
  )
  raw = example.features.feature['image'].bytes_list.value[0]
  assert len(raw) == image.size * bytes_per_value
  parsed = records.parse_case(tf.constant(serialized))
  np.testing.assert_array_equal(parsed['image'], image.astype(np.float32))


def test_packed_bytes_are_one_per_voxel():
  image, regions = _case((2, 2, 2))
  example = tf.train.Example.FromString(
    records.encode_case('c', image, regions)
  )
  packed = example.features.feature['regions'].bytes_list.value[0]
  assert len(packed) == 8
  assert list(packed) == list(layouts.pack_regions(regions).ravel())
  raw = example.features.feature['image'].bytes_list.value[0]
  assert len(raw) == 2 * 2 * 2 * 4 * 4  # float32 (normal samples), 4 channels


def test_parse_in_a_dataset_graph():
  image, regions = _case((6, 5, 4))
  ds = tf.data.Dataset.from_tensors(records.encode_case('x', image, regions))
  (parsed,) = list(ds.map(records.parse_case))
  assert parsed['image'].shape == (6, 5, 4, 4)
  assert parsed['regions'].shape == (6, 5, 4, 3)


@pytest.mark.parametrize(
  'image_shape, regions_shape, message',
  [
    (
      (3, 4, 5),
      (3, 4, 5, 3),
      r'image must have shape \[D, H, W, 4\]. Found \(3, 4, 5\)',
    ),
    ((3, 4, 5, 2), (3, 4, 5, 3), r'Found \(3, 4, 5, 2\)'),
    (
      (3, 4, 5, 4),
      (3, 4, 6, 3),
      r'regions must have shape \(3, 4, 5, 3\) to match image. Found \(3, 4, 6, 3\)',
    ),
  ],
)
def test_bad_shapes(image_shape, regions_shape, message):
  with pytest.raises(ValueError, match=message):
    records.encode_case('c', np.zeros(image_shape), np.zeros(regions_shape))


def test_packed_regions_unpack_to_the_same_channels():
  image, regions = _case((4, 3, 2))
  serialized = tf.constant(records.encode_case('c', image, regions))
  packed = records.parse_case(serialized, unpack_regions=False)['regions']
  assert packed.dtype == tf.uint8
  assert packed.shape == (4, 3, 2, 1)
  np.testing.assert_array_equal(packed[..., 0], layouts.pack_regions(regions))
  np.testing.assert_array_equal(
    records.unpack_regions_tf(packed), regions.astype(np.float32)
  )
  assert records.WT_BIT == 2


def test_record_without_image_dtype_parses_as_float32():
  image, regions = _case((2, 3, 4))
  example = tf.train.Example.FromString(
    records.encode_case('c', image, regions)
  )
  example.features.feature['image'].bytes_list.value[0] = image.astype(
    '<f4'
  ).tobytes()
  del example.features.feature['image_dtype']
  parsed = records.parse_case(tf.constant(example.SerializeToString()))
  np.testing.assert_array_equal(parsed['image'], image)
