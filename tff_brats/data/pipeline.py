"""The tf.data input pipeline: prepared shards to training crops (pure TF).

Preprocessing follows the reference BraTS training recipes (MONAI's BraTS
tutorial, which the NVIDIA Clara recipe of Li et al. 2019, arXiv 1910.00962,
descends from):

* per-modality z-score over the brain (the non-zero voxels of that channel);
  the background stays exactly 0 (`normalize_intensity`);
* a random crop of a fixed size, optionally centred on a random tumour (WT)
  voxel with probability `tumour_crop_probability` (foreground
  oversampling as in nnU-Net, Isensee et al. 2021), after zero-padding
  volumes smaller than the crop (`random_crop`);
* a random flip on each spatial axis independently, p = 0.5
  (`random_flip`);
* a random per-channel intensity scale and shift, x·(1 + u₁) + u₂ with
  u₁, u₂ ~ U(−0.1, 0.1), as MONAI's `RandScaleIntensity(factors=0.1)` and
  `RandShiftIntensity(offsets=0.1)`; like MONAI it applies to every voxel,
  the background included (`random_intensity`).

Every random function takes an explicit stateless seed (an int `[2]`
tensor, see `tf.random.stateless_uniform`), so a whole pipeline is a pure
function of its base seed.

Randomness of `make_training_dataset`:

* `seed=<int>`: the shard order, the record shuffle and every element's
  augmentation are fixed by the seed alone (stateless ops throughout, never
  `tf.data.Dataset.shuffle`, whose order also depends on TensorFlow's
  global seed). Element `i` (counted after the shuffle) gets the stateless
  seed `fold_in([0, seed], i)`, so a parallel map gives identical batches
  run after run and in any process. Iterating the same dataset again gives
  the same batches; build a new dataset with another seed for another
  epoch (the trainers derive one from (seed, epoch)).
* `seed=None`: the base seed is drawn by an unseeded `tf.random.uniform`
  each time the dataset is created eagerly and each time a graph that
  builds it runs (every call of a `tf.function` or TFF computation), so
  every call gets fresh augmentation. (Federated training passes a key
  instead, fresh or derived from a run seed; see below.)
* `seed=<int64 [2] tensor>`: the base seed itself (a stateless key), e.g.
  one computed inside a TFF computation from (run seed, round, client), so
  a graph traced once still gives each call its own reproducible data.

Batches are `(image, regions)` tuples, `image` float32 `[B, d, h, w, 4]`
and `regions` float32 `[B, d, h, w, 3]` in (TC, WT, ET) order, the form
Keras' `fit` and `tff.learning.models.from_keras_model` take. The last,
partial batch is dropped: FedAvg weights a client by its number of local
steps, and a static batch dimension keeps the model's and TFF's types
fixed. A client with fewer than `batch_size` crops per pass therefore
yields no batch at all.

Memory: a BraTS case cropped to its brain (about 140×170×140) is about
30 MB as a serialised record (int16 intensities) and about 95 MB parsed;
the record shuffle buffer holds `shuffle_buffer_size` serialised records
and every parallel map call holds one parsed case.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
from typing import Any

import tensorflow as tf

from tff_brats.data import layouts
from tff_brats.data import records
from tff_brats.utils import checks

# Foreground oversampling of nnU-Net (Isensee et al. 2021): a third of the
# patches are centred on a foreground voxel.
DEFAULT_TUMOUR_CROP_PROBABILITY = 1.0 / 3.0
DEFAULT_SHUFFLE_BUFFER_SIZE = 8
INTENSITY_SCALE_FACTOR = 0.1
INTENSITY_SHIFT_OFFSET = 0.1

_WT = layouts.REGIONS.index('WT')
# A channel whose brain voxels have std at most this fraction of their mean
# is treated as constant.
_RELATIVE_STD_FLOOR = 1e-5
_ABSOLUTE_STD_FLOOR = 1e-12
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


# Stream ids folded into the base seed for the two shuffles (the elements
# themselves use fold_in(base_seed, i) with i >= 0).
_SHARD_ORDER_STREAM = -1
_RECORD_ORDER_STREAM = -2


def zscore_statistics(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Per-channel mean and std over the brain (non-zero) voxels.

  Args:
    image: float32 `[D, H, W, C]`.

  Returns:
    `(mean, std)`, each float32 `[C]`. A channel without brain voxels gets
    mean 0 and std 1; a channel whose brain voxels are constant gets its
    value as mean and std 1 (as MONAI's `NormalizeIntensity`; a std of at
    most 1e-5·|mean| counts as constant), so its brain voxels normalise to
    exactly 0 instead of dividing by 0.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  voxels = tf.reshape(image, [-1, tf.shape(image)[-1]])
  brain = tf.not_equal(voxels, 0.0)
  # One pass of float64 sums (as fast here as float32 ones): E[x²] - E[x]²
  # loses nothing that matters at float32 output precision, and the mean
  # of a constant channel is exact (partial sums of up to 2^29 equal
  # float32 values are exact in float64), so its voxels map to exactly 0.
  values = tf.cast(voxels, tf.float64)
  count = tf.maximum(tf.reduce_sum(tf.cast(brain, tf.float64), axis=0), 1.0)
  mean = tf.reduce_sum(values, axis=0) / count
  mean_square = tf.reduce_sum(tf.square(values), axis=0) / count
  std = tf.sqrt(tf.maximum(mean_square - tf.square(mean), 0.0))
  floor = tf.maximum(_RELATIVE_STD_FLOOR * tf.abs(mean), _ABSOLUTE_STD_FLOOR)
  std = tf.where(std <= floor, tf.ones_like(std), std)
  mean, std = tf.cast(mean, tf.float32), tf.cast(std, tf.float32)
  return mean, std


def apply_zscore(
  image: tf.Tensor, mean: tf.Tensor, std: tf.Tensor
) -> tf.Tensor:
  """`(x - mean) / std` on the non-zero voxels; zeros stay exactly 0."""
  image = tf.convert_to_tensor(image, tf.float32)
  return tf.where(tf.not_equal(image, 0.0), (image - mean) / std, 0.0)


def normalize_intensity(image: tf.Tensor) -> tf.Tensor:
  """Per-modality z-score over the brain voxels; the background stays 0.

  Args:
    image: float32 `[D, H, W, C]` raw intensities.

  Returns:
    The normalised image, same shape.
  """
  mean, std = zscore_statistics(image)
  return apply_zscore(image, mean, std)


def pad_to_size(
  image: tf.Tensor, regions: tf.Tensor, size: Sequence[int]
) -> tuple[tf.Tensor, tf.Tensor]:
  """Zero-pads the spatial axes that are smaller than `size` (centred).

  Args:
    image: `[D, H, W, C]`.
    regions: `[D, H, W, R]`.
    size: `(d, h, w)`, the minimum spatial size.

  Returns:
    `(image, regions)` with spatial shape `max((D, H, W), size)`; the
    original volume sits in the middle (the extra voxel of an odd padding
    goes after it).
  """
  image = tf.convert_to_tensor(image)
  regions = tf.convert_to_tensor(regions)
  image_channels, region_channels = image.shape[-1], regions.shape[-1]
  shape = tf.shape(image)[:3]
  total = tf.maximum(tf.constant(size, tf.int32) - shape, 0)
  before = total // 2
  paddings = tf.concat(
    [tf.stack([before, total - before], axis=1), [[0, 0]]], axis=0
  )
  image, regions = tf.pad(image, paddings), tf.pad(regions, paddings)
  # Dynamic paddings hide the (unchanged) channel count from shape inference.
  image.set_shape([None, None, None, image_channels])
  regions.set_shape([None, None, None, region_channels])
  return image, regions


def sample_crop_start(
  volume_shape: tf.Tensor,
  crop_size: Sequence[int],
  tumour_voxels: tf.Tensor,
  seed: tf.Tensor,
  tumour_crop_probability: float = 0.0,
) -> tf.Tensor:
  """Draws the corner of a crop inside a volume.

  With probability `tumour_crop_probability` (and if there is any tumour)
  the crop is centred on a tumour voxel drawn uniformly from
  `tumour_voxels`, then shifted to lie inside the volume (the voxel stays
  inside the crop); otherwise the corner is uniform over all positions.

  Args:
    volume_shape: int `[3]`, the spatial shape, at least `crop_size`.
    crop_size: `(d, h, w)`.
    tumour_voxels: int `[N, 3]` voxel indices (N may be 0), e.g.
      `tf.where(regions[..., 1] > 0)`.
    seed: int `[2]` stateless seed.
    tumour_crop_probability: In [0, 1].

  Returns:
    int32 `[3]`, the crop's first voxel.
  """
  crop = tf.constant(crop_size, tf.int32)
  volume_shape = tf.cast(volume_shape, tf.int32)
  choice_seed, uniform_seed, voxel_seed = _split(seed, 3)
  room = volume_shape - crop + 1
  u = tf.random.stateless_uniform([3], uniform_seed)
  uniform_start = tf.minimum(
    tf.cast(u * tf.cast(room, tf.float32), tf.int32), room - 1
  )
  tumour_voxels = tf.cast(tf.reshape(tumour_voxels, [-1, 3]), tf.int32)
  num_tumour = tf.shape(tumour_voxels)[0]
  v = tf.random.stateless_uniform([], voxel_seed)
  index = tf.minimum(
    tf.cast(v * tf.cast(num_tumour, tf.float32), tf.int32), num_tumour - 1
  )
  # A dummy row keeps the gather valid when there is no tumour.
  padded = tf.concat([tumour_voxels, tf.zeros([1, 3], tf.int32)], axis=0)
  centre = tf.gather(padded, tf.maximum(index, 0))
  tumour_start = tf.clip_by_value(centre - crop // 2, 0, volume_shape - crop)
  use_tumour = tf.logical_and(
    tf.random.stateless_uniform([], choice_seed) < tumour_crop_probability,
    num_tumour > 0,
  )
  return tf.where(use_tumour, tumour_start, uniform_start)


def random_crop(
  image: tf.Tensor,
  regions: tf.Tensor,
  crop_size: Sequence[int],
  seed: tf.Tensor,
  tumour_crop_probability: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
  """A random `crop_size` crop of image and regions (same position).

  Volumes smaller than the crop are zero-padded first (`pad_to_size`).

  Args:
    image: `[D, H, W, C]`.
    regions: `[D, H, W, 3]` (TC, WT, ET); the tumour is WT.
    crop_size: `(d, h, w)` positive ints.
    seed: int `[2]` stateless seed.
    tumour_crop_probability: Probability of centring the crop on a random
      tumour voxel (see `sample_crop_start`).

  Returns:
    `(image [d, h, w, C], regions [d, h, w, 3])`.
  """
  crop_size = _check_crop_size(crop_size)
  checks.check_probability('tumour_crop_probability', tumour_crop_probability)
  image, regions = pad_to_size(image, regions, crop_size)
  tumour = tf.where(regions[..., _WT] > 0)
  start = sample_crop_start(
    tf.shape(image)[:3], crop_size, tumour, seed, tumour_crop_probability
  )
  return _slice(image, start, crop_size), _slice(regions, start, crop_size)


def random_flip(
  image: tf.Tensor, regions: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
  """Flips image and regions together on each spatial axis with p = 0.5.

  Args:
    image: `[D, H, W, C]`.
    regions: `[D, H, W, R]`.
    seed: int `[2]` stateless seed; the same seed flips the same axes, so
      applying it twice is the identity.

  Returns:
    The flipped `(image, regions)`.
  """
  image = tf.convert_to_tensor(image)
  regions = tf.convert_to_tensor(regions)
  flips = tf.random.stateless_uniform([3], seed) < 0.5
  axes = tf.boolean_mask(tf.range(3), flips)
  image, regions = tf.reverse(image, axes), tf.reverse(regions, axes)
  return image, regions


def random_intensity(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  scale_factor: float = INTENSITY_SCALE_FACTOR,
  shift_offset: float = INTENSITY_SHIFT_OFFSET,
) -> tf.Tensor:
  """Random per-channel intensity scale and shift: x·(1 + u₁) + u₂.

  u₁ ~ U(−scale_factor, scale_factor) and u₂ ~ U(−shift_offset,
  shift_offset), drawn per channel, as MONAI's `RandScaleIntensity(factors)`
  followed by `RandShiftIntensity(offsets)`.

  Args:
    image: float32 `[..., C]`.
    seed: int `[2]` stateless seed.
    scale_factor: Half-width of the scale range (non-negative).
    shift_offset: Half-width of the shift range (non-negative).

  Returns:
    The transformed image, same shape.
  """
  checks.check_non_negative_number('scale_factor', scale_factor)
  checks.check_non_negative_number('shift_offset', shift_offset)
  image = tf.convert_to_tensor(image, tf.float32)
  channels = tf.shape(image)[-1:]
  scale_seed, shift_seed = _split(seed, 2)
  scale = tf.random.stateless_uniform(
    channels, scale_seed, -scale_factor, scale_factor
  )
  shift = tf.random.stateless_uniform(
    channels, shift_seed, -shift_offset, shift_offset
  )
  return image * (1.0 + scale) + shift


def case_to_crops(
  image: tf.Tensor,
  regions: tf.Tensor,
  seed: tf.Tensor,
  *,
  crop_size: Sequence[int],
  crops_per_case: int = 1,
  tumour_crop_probability: float = DEFAULT_TUMOUR_CROP_PROBABILITY,
  augment: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
  """All training crops of one case: normalise, crop, augment.

  The z-score statistics and the tumour voxels are computed once per case
  and shared by its crops; normalising a crop with the whole volume's
  statistics equals cropping the normalised volume.

  Args:
    image: float32 `[D, H, W, 4]` raw intensities.
    regions: float32 `[D, H, W, 3]` (TC, WT, ET), or the packed uint8
      `[D, H, W, 1]` form of `records.parse_case(unpack_regions=False)`,
      which is unpacked crop by crop (cheaper than unpacking the volume).
    seed: int `[2]` stateless seed of this case.
    crop_size: `(d, h, w)`.
    crops_per_case: Number of crops (each with its own seed).
    tumour_crop_probability: See `sample_crop_start`.
    augment: Whether to flip and scale/shift intensities.

  Returns:
    `(images [K, d, h, w, 4], regions [K, d, h, w, 3])`, K =
    `crops_per_case`.
  """
  crop_size = _check_crop_size(crop_size)
  checks.check_positive_int('crops_per_case', crops_per_case)
  checks.check_probability('tumour_crop_probability', tumour_crop_probability)
  image, regions = _ensure_case_shapes(image, regions)
  packed = regions.dtype == tf.uint8
  mean, std = zscore_statistics(image)
  image, regions = pad_to_size(image, regions, crop_size)
  if packed:
    tumour = tf.where(
      tf.bitwise.bitwise_and(regions[..., 0], records.WT_BIT) > 0
    )
  else:
    tumour = tf.where(regions[..., _WT] > 0)
  volume_shape = tf.shape(image)[:3]
  image_crops, region_crops = [], []
  for crop_seed in _split(seed, crops_per_case):
    start_seed, flip_seed, intensity_seed = _split(crop_seed, 3)
    start = sample_crop_start(
      volume_shape, crop_size, tumour, start_seed, tumour_crop_probability
    )
    image_crop = apply_zscore(_slice(image, start, crop_size), mean, std)
    region_crop = _slice(regions, start, crop_size)
    if packed:
      region_crop = records.unpack_regions_tf(region_crop)
    if augment:
      image_crop, region_crop = random_flip(image_crop, region_crop, flip_seed)
      image_crop = random_intensity(image_crop, intensity_seed)
    image_crops.append(image_crop)
    region_crops.append(region_crop)
  return tf.stack(image_crops), tf.stack(region_crops)


def training_element_spec(
  crop_size: Sequence[int], batch_size: int
) -> tuple[tf.TensorSpec, tf.TensorSpec]:
  """The element spec of `make_training_dataset` batches."""
  crop_size = _check_crop_size(crop_size)
  checks.check_positive_int('batch_size', batch_size)
  return (
    tf.TensorSpec([batch_size, *crop_size, records.NUM_MODALITIES], tf.float32),
    tf.TensorSpec([batch_size, *crop_size, records.NUM_REGIONS], tf.float32),
  )


def make_training_dataset(
  shard_paths: Sequence[str] | tf.Tensor,
  *,
  crop_size: Sequence[int],
  batch_size: int,
  tumour_crop_probability: float = DEFAULT_TUMOUR_CROP_PROBABILITY,
  crops_per_case: int = 1,
  augment: bool = True,
  shuffle: bool = True,
  shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER_SIZE,
  seed: int | tf.Tensor | None = None,
  num_parallel_calls: int = tf.data.AUTOTUNE,
  prefetch: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
  """Batches of training crops read from prepared TFRecord shards.

  One pass over the shards: every case is parsed once and gives
  `crops_per_case` crops (parsing a whole volume is the expensive part).
  Works eagerly and inside a TF graph (a `tff.tensorflow.computation`).

  Args:
    shard_paths: Shard file paths, a non-empty Python list or a 1-D
      `tf.string` tensor.
    crop_size: `(d, h, w)` of the crops, positive ints (an int means a cube).
    batch_size: Crops per batch (>= 1); the last partial batch is dropped.
    tumour_crop_probability: Probability in [0, 1] that a crop is centred
      on a random tumour voxel.
    crops_per_case: Crops taken from each parsed case (>= 1).
    augment: Random flips and intensity scale/shift when True.
    shuffle: Shuffle the shard order and the records (in consecutive
      blocks of `shuffle_buffer_size`); crops of one case stay consecutive.
    shuffle_buffer_size: Serialised records per shuffled block (>= 1).
    seed: A non-negative int for reproducible batches, an int64 `[2]`
      stateless key, or None for fresh randomness every time the dataset
      is created (see the module doc).
    num_parallel_calls: Parallel parse/crop calls (>= 1 or
      `tf.data.AUTOTUNE`); the map stays deterministic.
    prefetch: Batches to prefetch (>= 0 or `tf.data.AUTOTUNE`; 0 = none).

  Returns:
    A dataset of `(image [B, d, h, w, 4], regions [B, d, h, w, 3])` float32
    tuples.
  """
  paths = _check_shard_paths(shard_paths)
  files = tf.data.Dataset.from_tensor_slices(paths)
  options = _check_training_options(
    crop_size=crop_size,
    batch_size=batch_size,
    tumour_crop_probability=tumour_crop_probability,
    crops_per_case=crops_per_case,
    augment=augment,
    shuffle=shuffle,
    shuffle_buffer_size=shuffle_buffer_size,
    seed=seed,
    num_parallel_calls=num_parallel_calls,
    prefetch=prefetch,
  )
  if shuffle:
    # A fresh unseeded draw, or a stream of its own for a fixed seed.
    order_seed = tf.random.experimental.stateless_fold_in(
      _base_seed(seed), _SHARD_ORDER_STREAM
    )
    files = (
      files.batch(tf.cast(tf.size(paths), tf.int64))
      .map(
        lambda names: tf.gather(names, _permutation(tf.size(names), order_seed))
      )
      .unbatch()
    )
  serialized = tf.data.TFRecordDataset(files)
  return _training_dataset(serialized, _parse_image_and_regions, **options)


def make_training_dataset_from_cases(
  cases: tf.data.Dataset, **training_kwargs: Any
) -> tf.data.Dataset:
  """`make_training_dataset` over cases already in memory.

  Args:
    cases: A dataset of dicts with `image` (float32 `[D, H, W, 4]`, raw
      intensities) and `regions` (float32 `[D, H, W, 3]`), e.g. from
      `tf.data.Dataset.from_tensor_slices`. With `shuffle=True` the shuffle
      buffer holds whole cases.
    **training_kwargs: The keyword arguments of `make_training_dataset`.

  Returns:
    The same batches `make_training_dataset` gives for these cases.
  """
  if not isinstance(cases, tf.data.Dataset):
    raise TypeError(f'cases must be a tf.data.Dataset. Found {type(cases)}.')
  options = _check_training_options(**training_kwargs)
  return _training_dataset(
    cases, lambda case: (case['image'], case['regions']), **options
  )


def make_lot_dataset(
  shard_paths: Sequence[str] | tf.Tensor,
  *,
  num_steps: int,
  lot_fn,
  seed: tf.Tensor,
  crop_size: Sequence[int],
  crops_per_case: int = 1,
  tumour_crop_probability: float = DEFAULT_TUMOUR_CROP_PROBABILITY,
  augment: bool = True,
) -> tf.data.Dataset:
  """The cases of `num_steps` steps, one element per case and step, for DP-SGD.

  Step t's lot is the cases whose entry of `lot_fn(t, n)` is True (n: the
  number of records in the shards, in their order). Each case of a lot
  gives one element holding all `crops_per_case` of its crops for that
  step, and every step ends with a marker element, so a step whose lot is
  empty is still seen:

    (step int64, is_case bool, images float32 [K, d, h, w, 4],
     regions float32 [K, d, h, w, 3], num_cases int64, index int64)

  with K = `crops_per_case`; a marker has is_case False, zero images and
  regions and index -1. A case appears at most once per step. The shards
  are read once per step (only the lot's cases are parsed), so memory holds
  one case at a time.

  Args:
    shard_paths: The client's shard paths (non-empty; their order fixes the
      case indices).
    num_steps: Steps T (>= 1).
    lot_fn: `(step int64 scalar, num_cases int64 scalar) -> bool [n]`,
      traceable (e.g. a keyed Poisson sample).
    seed: int64 `[2]` key of the crops and augmentation; case i of step t
      uses fold_in(fold_in(seed, t), i).
    crop_size, crops_per_case, tumour_crop_probability, augment: As in
      `make_training_dataset`.
  """
  paths = _check_shard_paths(shard_paths)
  checks.check_positive_int('num_steps', num_steps)
  crop_size = _check_crop_size(crop_size)
  checks.check_positive_int('crops_per_case', crops_per_case)
  checks.check_probability('tumour_crop_probability', tumour_crop_probability)
  if not callable(lot_fn):
    raise TypeError(f'lot_fn must be callable. Found {lot_fn!r}.')
  records_ds = tf.data.TFRecordDataset(paths)
  num_cases = records_ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
  image_shape = [crops_per_case, *crop_size, records.NUM_MODALITIES]
  region_shape = [crops_per_case, *crop_size, records.NUM_REGIONS]

  def one_step(step):
    lot = tf.ensure_shape(lot_fn(step, num_cases), [None])
    step_seed = tf.random.experimental.stateless_fold_in(seed, step)

    def crops(index, serialized):
      image, regions = _parse_image_and_regions(serialized)
      images, region_crops = case_to_crops(
        image,
        regions,
        tf.random.experimental.stateless_fold_in(step_seed, index),
        crop_size=crop_size,
        crops_per_case=crops_per_case,
        tumour_crop_probability=tumour_crop_probability,
        augment=augment,
      )
      return step, True, images, region_crops, num_cases, index

    cases = (
      records_ds.enumerate()
      .filter(lambda index, _: tf.gather(lot, index))
      .map(crops)
    )
    marker = tf.data.Dataset.from_tensors(
      (
        step,
        False,
        tf.zeros(image_shape, tf.float32),
        tf.zeros(region_shape, tf.float32),
        num_cases,
        tf.constant(-1, tf.int64),
      )
    )
    return cases.concatenate(marker)

  return tf.data.Dataset.range(num_steps).flat_map(one_step)


def lot_element_spec(
  crop_size: Sequence[int], crops_per_case: int
) -> tuple[tf.TensorSpec, ...]:
  """The element spec of `make_lot_dataset`."""
  crop_size = _check_crop_size(crop_size)
  checks.check_positive_int('crops_per_case', crops_per_case)
  return (
    tf.TensorSpec([], tf.int64),
    tf.TensorSpec([], tf.bool),
    tf.TensorSpec(
      [crops_per_case, *crop_size, records.NUM_MODALITIES], tf.float32
    ),
    tf.TensorSpec(
      [crops_per_case, *crop_size, records.NUM_REGIONS], tf.float32
    ),
    tf.TensorSpec([], tf.int64),
    tf.TensorSpec([], tf.int64),
  )


def make_evaluation_dataset(
  shard_paths: Sequence[str] | tf.Tensor,
  *,
  num_parallel_calls: int = tf.data.AUTOTUNE,
  prefetch: int = 1,
) -> tf.data.Dataset:
  """Whole normalised cases, unbatched, in shard order (for sliding windows).

  Args:
    shard_paths: As for `make_training_dataset`.
    num_parallel_calls: Parallel parse calls (>= 1 or `tf.data.AUTOTUNE`).
    prefetch: Cases to prefetch (>= 0 or `tf.data.AUTOTUNE`).

  Returns:
    A dataset of dicts: `case_id` (tf.string), `image` (float32
    `[D, H, W, 4]`, z-scored) and `regions` (float32 `[D, H, W, 3]`).
  """
  paths = _check_shard_paths(shard_paths)
  _check_autotune_or_positive('num_parallel_calls', num_parallel_calls)
  _check_autotune_or_non_negative('prefetch', prefetch)

  def normalise(serialized):
    case = records.parse_case(serialized)
    image, regions = _ensure_case_shapes(case['image'], case['regions'])
    case['image'] = normalize_intensity(image)
    case['regions'] = regions
    return case

  dataset = tf.data.TFRecordDataset(paths).map(
    normalise, num_parallel_calls=num_parallel_calls, deterministic=True
  )
  return dataset.prefetch(prefetch) if prefetch else dataset


def make_centralized_dataset(
  manifest: Any, **training_kwargs: Any
) -> tf.data.Dataset:
  """The pooled training set of every client, for the centralised baseline.

  Args:
    manifest: A `tff_brats.data.manifest.Manifest`.
    **training_kwargs: The keyword arguments of `make_training_dataset`.

  Returns:
    `make_training_dataset` over `manifest.all_client_shard_paths()`.
  """
  return make_training_dataset(
    manifest.all_client_shard_paths(), **training_kwargs
  )


def _training_dataset(
  dataset: tf.data.Dataset,
  to_image_and_regions,
  *,
  crop_size: tuple[int, int, int],
  batch_size: int,
  tumour_crop_probability: float,
  crops_per_case: int,
  augment: bool,
  shuffle: bool,
  shuffle_buffer_size: int,
  seed: int | None,
  num_parallel_calls: int,
  prefetch: int,
) -> tf.data.Dataset:
  """Shuffle, per-element seeds, crops, batches: shared by both sources."""
  base_seed = _base_seed(seed)
  if shuffle:
    dataset = _block_shuffle(
      dataset,
      shuffle_buffer_size,
      tf.random.experimental.stateless_fold_in(base_seed, _RECORD_ORDER_STREAM),
    )

  def crops(index, element):
    image, regions = to_image_and_regions(element)
    return case_to_crops(
      image,
      regions,
      tf.random.experimental.stateless_fold_in(base_seed, index),
      crop_size=crop_size,
      crops_per_case=crops_per_case,
      tumour_crop_probability=tumour_crop_probability,
      augment=augment,
    )

  dataset = dataset.enumerate().map(
    crops, num_parallel_calls=num_parallel_calls, deterministic=True
  )
  dataset = dataset.unbatch().batch(batch_size, drop_remainder=True)
  return dataset.prefetch(prefetch) if prefetch else dataset


def _block_shuffle(
  dataset: tf.data.Dataset, block_size: int, seed: tf.Tensor
) -> tf.data.Dataset:
  """Permutes each run of `block_size` elements by a stateless permutation.

  Unlike `tf.data.Dataset.shuffle`, whose order also depends on TensorFlow's
  global seed (so the same `seed` gives another order in a process that
  called `tf.random.set_seed`, e.g. the TFF worker vs. the driver), the
  order here is a function of `seed` alone. Block `b` is permuted with
  `fold_in(seed, b)`; elements never leave their block.
  """

  def permute(index, window):
    block = tf.data.Dataset.zip(window)
    size = block.reduce(tf.constant(0, tf.int32), lambda n, _: n + 1)
    order = _permutation(
      size, tf.random.experimental.stateless_fold_in(seed, index)
    )
    return tf.data.Dataset.from_tensor_slices(order).flat_map(
      lambda j: block.skip(tf.cast(j, tf.int64)).take(1)
    )

  return dataset.window(block_size).enumerate().flat_map(permute)


def _permutation(size: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """A uniformly random permutation of `range(size)`, stateless."""
  return tf.argsort(tf.random.stateless_uniform([size], seed=seed))


def _parse_image_and_regions(serialized):
  case = records.parse_case(serialized, unpack_regions=False)
  return case['image'], case['regions']


def _ensure_case_shapes(
  image: tf.Tensor, regions: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
  image = tf.ensure_shape(
    tf.convert_to_tensor(image, tf.float32),
    [None, None, None, records.NUM_MODALITIES],
  )
  regions = tf.convert_to_tensor(regions)
  if regions.dtype == tf.uint8:  # packed bits, see records.parse_case
    return image, tf.ensure_shape(regions, [None, None, None, 1])
  regions = tf.ensure_shape(
    tf.cast(regions, tf.float32), [None, None, None, records.NUM_REGIONS]
  )
  return image, regions


def _base_seed(seed: int | tf.Tensor | None) -> tf.Tensor:
  if isinstance(seed, tf.Tensor):
    return seed
  if seed is None:
    # Unseeded: a fresh value each time the graph runs (each TFF call and
    # client), or each time the dataset is built eagerly.
    return tf.random.uniform(
      [2], minval=_INT64_MIN, maxval=_INT64_MAX, dtype=tf.int64
    )
  return tf.constant([0, seed], tf.int64)


def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  seeds = tf.random.experimental.stateless_split(seed, num)
  return [seeds[i] for i in range(num)]


def _slice(
  volume: tf.Tensor, start: tf.Tensor, size: tuple[int, int, int]
) -> tf.Tensor:
  cropped = tf.slice(
    volume, tf.concat([start, [0]], axis=0), [*size, tf.shape(volume)[-1]]
  )
  return tf.ensure_shape(cropped, [*size, volume.shape[-1]])


def _check_training_options(
  *,
  crop_size: Any,
  batch_size: Any,
  tumour_crop_probability: Any = DEFAULT_TUMOUR_CROP_PROBABILITY,
  crops_per_case: Any = 1,
  augment: bool = True,
  shuffle: bool = True,
  shuffle_buffer_size: Any = DEFAULT_SHUFFLE_BUFFER_SIZE,
  seed: Any = None,
  num_parallel_calls: Any = tf.data.AUTOTUNE,
  prefetch: Any = tf.data.AUTOTUNE,
) -> dict[str, Any]:
  crop_size = _check_crop_size(crop_size)
  checks.check_positive_int('batch_size', batch_size)
  checks.check_probability('tumour_crop_probability', tumour_crop_probability)
  checks.check_positive_int('crops_per_case', crops_per_case)
  checks.check_positive_int('shuffle_buffer_size', shuffle_buffer_size)
  if isinstance(seed, tf.Tensor | tf.Variable):
    if seed.dtype != tf.int64 or seed.shape != [2]:
      raise ValueError(
        'seed must be None, a non-negative 64-bit integer or an int64 [2] '
        f'tensor. Found a {seed.dtype.name} tensor of shape {seed.shape}.'
      )
  elif seed is not None and (
    not checks.is_int(seed) or not 0 <= seed <= _INT64_MAX
  ):
    raise ValueError(
      f'seed must be None or a non-negative 64-bit integer. Found {seed!r}.'
    )
  _check_autotune_or_positive('num_parallel_calls', num_parallel_calls)
  _check_autotune_or_non_negative('prefetch', prefetch)
  return dict(
    crop_size=crop_size,
    batch_size=int(batch_size),
    tumour_crop_probability=float(tumour_crop_probability),
    crops_per_case=int(crops_per_case),
    augment=bool(augment),
    shuffle=bool(shuffle),
    shuffle_buffer_size=int(shuffle_buffer_size),
    seed=seed if seed is None or isinstance(seed, tf.Tensor) else int(seed),
    num_parallel_calls=int(num_parallel_calls),
    prefetch=int(prefetch),
  )


def _check_shard_paths(shard_paths: Any) -> tf.Tensor:
  """A 1-D tf.string tensor of the paths; a runtime check if not static."""
  if isinstance(shard_paths, tf.Tensor | tf.Variable):
    if shard_paths.dtype != tf.string or shard_paths.shape.rank != 1:
      raise ValueError(
        'shard_paths must be a 1-D tf.string tensor or a list of paths. '
        f'Found a {shard_paths.dtype.name} tensor of shape '
        f'{shard_paths.shape}.'
      )
    if shard_paths.shape[0] == 0:
      raise ValueError(f'shard_paths must not be empty. Found {shard_paths}.')
    if shard_paths.shape[0] is not None:
      return shard_paths
    check = tf.debugging.assert_positive(
      tf.size(shard_paths),
      message='shard_paths must not be empty. Found 0 paths.',
    )
    with tf.control_dependencies([check]):
      return tf.identity(shard_paths)
  if isinstance(shard_paths, str | bytes | os.PathLike) or not isinstance(
    shard_paths, Sequence
  ):
    raise ValueError(
      'shard_paths must be a list of paths or a 1-D tf.string tensor. '
      f'Found {shard_paths!r}.'
    )
  if not shard_paths:
    raise ValueError(f'shard_paths must not be empty. Found {shard_paths!r}.')
  paths = []
  for path in shard_paths:
    if not isinstance(path, str | bytes | os.PathLike):
      raise ValueError(
        f'shard_paths must hold path strings. Found {path!r} in {shard_paths!r}.'
      )
    paths.append(os.fsdecode(path))
  return tf.constant(paths, tf.string)


def _check_crop_size(crop_size: Any) -> tuple[int, int, int]:
  if checks.is_int(crop_size):
    crop_size = (crop_size,) * 3
  if (
    not isinstance(crop_size, Sequence)
    or isinstance(crop_size, str)
    or len(crop_size) != 3
    or not all(checks.is_int(v) and v >= 1 for v in crop_size)
  ):
    raise ValueError(
      'crop_size must be 3 positive integers (d, h, w) or one positive '
      f'integer. Found {crop_size!r}.'
    )
  return tuple(int(v) for v in crop_size)


def _check_autotune_or_positive(name: str, value: Any) -> None:
  if not checks.is_int(value) or not (value >= 1 or value == tf.data.AUTOTUNE):
    raise ValueError(
      f'{name} must be a positive integer or tf.data.AUTOTUNE. Found {value!r}.'
    )


def _check_autotune_or_non_negative(name: str, value: Any) -> None:
  if not checks.is_int(value) or not (value >= 0 or value == tf.data.AUTOTUNE):
    raise ValueError(
      f'{name} must be a non-negative integer or tf.data.AUTOTUNE. '
      f'Found {value!r}.'
    )
