"""Test helpers: tiny BraTS-style NIfTI cases and tiny networks.

A case is a `SHAPE` volume that is exactly 0 outside the brain box `BOX`
(skull-stripped), with intensities around 100 inside and, with `markers`,
blocks of 1000 in channels 0, 1 and 2 where the TC, WT and ET regions of
`MARKER_REGIONS` are. `marker_predictor` is a 'network' that finds those
blocks voxel by voxel, so the expected segmentation is known in the
original grid whatever the crop and the windows.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import tensorflow as tf

from tff_brats.data import layouts
from tff_brats.inference import predictors
from tff_brats.models import training_metadata

SHAPE = (20, 18, 16)
BOX = ((3, 15), (2, 14), (4, 12))
# LPS, the BraTS orientation (the reader keeps it as stored).
AFFINE = np.array(
  [
    [-1.0, 0.0, 0.0, 90.0],
    [0.0, -1.5, 0.0, 126.0],
    [0.0, 0.0, 2.0, -72.0],
    [0.0, 0.0, 0.0, 1.0],
  ]
)
QFORM_CODE = 1  # scanner
SFORM_CODE = 2  # aligned
MARKER = 1000.0
# Normalised marker voxels are ~6, brain voxels ~0 (see marker_predictor).
MARKER_THRESHOLD = 2.0


def marker_regions(shape=SHAPE) -> np.ndarray:
  """bool `[D, H, W, 3]` (TC, WT, ET) blocks inside `BOX`, ET ⊂ TC ⊂ WT."""
  regions = np.zeros((*shape, 3), bool)
  regions[5:9, 4:8, 5:9, 1] = True  # WT
  regions[6:8, 5:7, 6:8, 0] = True  # TC
  regions[7:8, 6:7, 6:8, 2] = True  # ET
  return regions


def make_image(
  shape=SHAPE, box=BOX, *, seed: int = 0, markers: bool = True
) -> np.ndarray:
  """float32 `[D, H, W, 4]`: ~100 in the box (whole numbers), 0 outside."""
  rng = np.random.default_rng(seed)
  image = np.zeros((*shape, 4), np.float32)
  inside = tuple(slice(a, b) for a, b in box)
  image[inside] = rng.integers(90, 111, size=image[inside].shape)
  if markers:
    regions = marker_regions(shape)
    for channel in range(3):
      image[..., channel][regions[..., channel]] = MARKER
  return image


def write_nifti(path, data, affine=AFFINE) -> str:
  image = nib.Nifti1Image(np.asarray(data), affine)
  image.header.set_qform(affine, code=QFORM_CODE)
  image.header.set_sform(affine, code=SFORM_CODE)
  image.header.set_xyzt_units('mm')
  image.header['descrip'] = b'tff_brats test case'
  nib.save(image, str(path))
  return str(path)


def write_case(
  parent,
  case_id: str,
  layout: layouts.Layout = layouts.BRATS2018,
  image: np.ndarray | None = None,
  *,
  labels: np.ndarray | None = None,
) -> str:
  """Writes `<parent>/<case_id>/<case_id>_<modality>.nii.gz` (int16)."""
  image = make_image() if image is None else image
  folder = os.path.join(str(parent), case_id)
  os.makedirs(folder)
  for channel, suffix in enumerate(layout.modalities):
    write_nifti(
      os.path.join(folder, layout.file_name(case_id, suffix)),
      image[..., channel].astype(np.int16),
    )
  if labels is not None:
    write_nifti(
      os.path.join(folder, layout.file_name(case_id, layout.label_suffix)),
      labels.astype(np.uint8),
    )
  return folder


def modality_path(folder, layout: layouts.Layout, suffix: str) -> str:
  folder = str(folder)
  return os.path.join(
    folder, layout.file_name(os.path.basename(folder), suffix)
  )


def marker_predictor(
  size_multiple: int = 1,
  training: training_metadata.TrainingMetadata | None = None,
  seen: list[tuple[int, ...]] | None = None,
) -> predictors.Predictor:
  """Per voxel: region c where normalised channel c > MARKER_THRESHOLD.

  Args:
    size_multiple: The predictor's size multiple.
    training: The predictor's training record.
    seen: If given, the shape of every batch is appended to it.
  """

  def fn(batch):
    if seen is not None:
      seen.append(batch.shape)
    return (batch[..., :3] > MARKER_THRESHOLD).astype(np.float32)

  return predictors.Predictor(
    fn, size_multiple=size_multiple, training=training
  )


def tiny_keras_model(seed: int = 0) -> tf.keras.Model:
  """4 channels → two 3³/1³ convolutions → 3 sigmoid outputs."""
  init = tf.keras.initializers.GlorotUniform
  inputs = tf.keras.Input((None, None, None, 4))
  x = tf.keras.layers.Conv3D(
    4, 3, padding='same', activation='relu', kernel_initializer=init(seed)
  )(inputs)
  outputs = tf.keras.layers.Conv3D(
    3,
    1,
    activation='sigmoid',
    kernel_initializer=init(seed + 1),
    bias_initializer=tf.keras.initializers.Constant(-0.3),
  )(x)
  return tf.keras.Model(inputs, outputs)


def tiny_segresnet(seed: int = 0) -> tf.keras.Model:
  """A small built SegResNet (3 levels, size multiple 4)."""
  from tff_brats.models import segresnet

  tf.keras.utils.set_random_seed(seed)
  model = segresnet.SegResNet(
    init_filters=8, blocks_down=(1, 1, 1), blocks_up=(1, 1)
  )
  model(tf.zeros([1, 4, 4, 4, 4]))
  return model
