"""Tests for tff_brats.data.layouts."""

import numpy as np
import pytest

from tff_brats.data import layouts

B18 = layouts.BRATS2018
B23 = layouts.BRATS2023


def test_conventions():
  assert B18.labels == (0, 1, 2, 4)
  assert B23.labels == (0, 1, 2, 3)
  assert (
    B18.file_name('Brats18_2013_2_1', 't1ce') == 'Brats18_2013_2_1_t1ce.nii.gz'
  )
  assert B23.file_name('BraTS-GLI-00000-000', 't2f', '.nii') == (
    'BraTS-GLI-00000-000-t2f.nii'
  )
  assert layouts.get_layout('brats2023') is B23


def test_unknown_layout():
  with pytest.raises(
    ValueError,
    match=r"^layout must be one of brats2018, brats2023\. Found 'brats2019'\.$",
  ):
    layouts.get_layout('brats2019')


@pytest.mark.parametrize('layout', [B18, B23])
def test_labels_to_regions_hand_computed(layout):
  labels = np.array(
    [0, layout.necrotic_label, layout.edema_label, layout.enhancing_label]
  )
  # Rows: background, necrotic, oedema, enhancing; columns TC, WT, ET.
  expected = np.array(
    [
      [0, 0, 0],
      [1, 1, 0],
      [0, 1, 0],
      [1, 1, 1],
    ],
    bool,
  )
  np.testing.assert_array_equal(
    layouts.labels_to_regions(labels, layout), expected
  )


@pytest.mark.parametrize('layout', [B18, B23])
def test_label_round_trip(layout):
  rng = np.random.default_rng(0)
  labels = rng.choice(layout.labels, size=(5, 6, 7)).astype(np.uint8)
  regions = layouts.labels_to_regions(labels, layout)
  np.testing.assert_array_equal(
    layouts.regions_to_labels(regions, layout), labels
  )


def test_regions_to_labels_enforces_nesting():
  # TC, WT, ET per voxel; inconsistent predictions resolve as ET ⊂ TC ⊂ WT.
  regions = np.array(
    [
      [0, 0, 1],  # ET alone: enhancing
      [1, 0, 0],  # TC alone: necrotic
      [0, 1, 0],  # WT alone: oedema
      [0, 0, 0],  # nothing: background
      [1, 1, 1],
    ],
    bool,
  )
  np.testing.assert_array_equal(
    layouts.regions_to_labels(regions, B18), [4, 1, 2, 0, 4]
  )
  np.testing.assert_array_equal(
    layouts.regions_to_labels(regions, B23), [3, 1, 2, 0, 3]
  )


def test_regions_to_labels_bad_shape():
  with pytest.raises(ValueError, match=r'3 channels.*Found shape \(4, 2\)'):
    layouts.regions_to_labels(np.zeros((4, 2)), B18)


def test_pack_unpack():
  regions = np.array([[0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 1, 1]], bool)
  packed = layouts.pack_regions(regions)
  np.testing.assert_array_equal(packed, [0, 3, 2, 7])
  assert packed.dtype == np.uint8
  np.testing.assert_array_equal(layouts.unpack_regions(packed), regions)
