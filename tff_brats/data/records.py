"""The TFRecord format of prepared cases (one `tf.train.Example` per case).

A record holds one case cropped to its brain bounding box:

* `case_id`: bytes, the BraTS case id.
* `shape`: int64 `[3]`, the cropped volume shape `(D, H, W)`.
* `image`: bytes, little-endian `[D, H, W, 4]`, raw scanner intensities in
  the layout's modality order (z-scoring happens in the input pipeline, so a
  shard can be re-normalised differently without re-reading the NIfTI
  files).
* `image_dtype`: bytes, 'int16' when every intensity is a whole number that
  int16 holds exactly (BraTS scans are stored as int16, so this is the usual
  case and halves the shard size), otherwise 'float32'. Either way the
  parsed image is float32 and equal to the source values.
* `regions`: bytes, uint8 `[D, H, W]`, the (TC, WT, ET) regions packed as
  bits 1, 2, 4 (see `layouts.pack_regions`); one byte per voxel instead of
  three.

`encode_case` is numpy; `parse_case` is pure TensorFlow, so it runs inside a
`tf.data` pipeline and inside a TFF computation.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tff_brats.data import layouts

NUM_MODALITIES = 4
NUM_REGIONS = len(layouts.REGIONS)
# Bit of the whole-tumour region in a packed mask.
WT_BIT = layouts.REGION_BITS[layouts.REGIONS.index('WT')]

FEATURES = {
  'case_id': tf.io.FixedLenFeature([], tf.string),
  'shape': tf.io.FixedLenFeature([3], tf.int64),
  'image': tf.io.FixedLenFeature([], tf.string),
  # Absent in shards written before int16 storage existed: float32.
  'image_dtype': tf.io.FixedLenFeature([], tf.string, default_value='float32'),
  'regions': tf.io.FixedLenFeature([], tf.string),
}


def encode_case(case_id: str, image: np.ndarray, regions: np.ndarray) -> bytes:
  """Serialises one case.

  Args:
    case_id: The case id.
    image: float `[D, H, W, 4]` intensities.
    regions: bool `[D, H, W, 3]` (TC, WT, ET) masks.

  Returns:
    A serialised `tf.train.Example`.
  """
  image = np.asarray(image)
  regions = np.asarray(regions)
  if image.ndim != 4 or image.shape[-1] != NUM_MODALITIES:
    raise ValueError(
      f'image must have shape [D, H, W, {NUM_MODALITIES}]. Found {image.shape}.'
    )
  if regions.shape != (*image.shape[:3], NUM_REGIONS):
    raise ValueError(
      f'regions must have shape {(*image.shape[:3], NUM_REGIONS)} to match '
      f'image. Found {regions.shape}.'
    )
  dtype_name = 'int16' if _fits_int16(image) else 'float32'
  dtype = {'int16': '<i2', 'float32': '<f4'}[dtype_name]
  feature = {
    'case_id': _bytes_feature(case_id.encode('utf-8')),
    'shape': tf.train.Feature(
      int64_list=tf.train.Int64List(value=list(image.shape[:3]))
    ),
    'image': _bytes_feature(image.astype(dtype).tobytes()),
    'image_dtype': _bytes_feature(dtype_name.encode('ascii')),
    'regions': _bytes_feature(layouts.pack_regions(regions).tobytes()),
  }
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString()


def parse_case(
  serialized: tf.Tensor, *, unpack_regions: bool = True
) -> dict[str, tf.Tensor]:
  """Parses one serialised case (pure TF).

  Args:
    serialized: A scalar `tf.string` tensor from a shard.
    unpack_regions: Whether to return the regions as three float channels;
      False returns the packed uint8 mask `[D, H, W, 1]` (a quarter of the
      memory of float channels), for pipelines that crop first and unpack
      only the crop with `unpack_regions`.

  Returns:
    A dict with `case_id` (tf.string scalar), `image` (float32
    `[D, H, W, 4]`) and `regions` (float32 `[D, H, W, 3]`, 0 or 1, in
    (TC, WT, ET) order; or uint8 `[D, H, W, 1]` packed, see above).
  """
  parsed = tf.io.parse_single_example(serialized, FEATURES)
  shape = tf.cast(parsed['shape'], tf.int32)
  image = tf.cond(
    tf.equal(parsed['image_dtype'], 'int16'),
    lambda: tf.cast(
      tf.io.decode_raw(parsed['image'], tf.int16, little_endian=True),
      tf.float32,
    ),
    lambda: tf.io.decode_raw(parsed['image'], tf.float32, little_endian=True),
  )
  image = tf.reshape(image, tf.concat([shape, [NUM_MODALITIES]], axis=0))
  packed = tf.io.decode_raw(parsed['regions'], tf.uint8)
  packed = tf.reshape(packed, tf.concat([shape, [1]], axis=0))
  return {
    'case_id': parsed['case_id'],
    'image': image,
    'regions': unpack_regions_tf(packed) if unpack_regions else packed,
  }


def unpack_regions_tf(packed: tf.Tensor) -> tf.Tensor:
  """Packed uint8 `[..., 1]` region bits to float32 `[..., 3]` (TC, WT, ET)."""
  bits = tf.constant(layouts.REGION_BITS, tf.uint8)
  return tf.cast(tf.bitwise.bitwise_and(packed, bits) > 0, tf.float32)


def _fits_int16(image: np.ndarray) -> bool:
  if np.issubdtype(image.dtype, np.integer):
    info = np.iinfo(image.dtype)
    if info.min >= -(2**15) and info.max < 2**15:
      return True
  if image.size == 0:
    return True
  if image.min() < -(2**15) or image.max() >= 2**15:
    return False
  return bool(np.all(np.round(image) == image))


def _bytes_feature(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
