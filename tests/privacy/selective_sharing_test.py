"""Tests for tff_brats.privacy.selective_sharing."""

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.privacy import selective_sharing


def _expected_mask(magnitudes, count):
  """The c largest, ties to the lowest index (a stable sort by -value)."""
  order = np.lexsort((np.arange(magnitudes.size), -magnitudes))
  mask = np.zeros(magnitudes.size, bool)
  mask[order[:count]] = True
  return mask


def test_picks_the_largest_by_hand():
  values = tf.constant([0.3, -0.9, 0.0, 0.5, -0.1, 0.7])
  got = selective_sharing.share_largest(values, 3).numpy()
  np.testing.assert_array_equal(
    got, np.float32([0.0, -0.9, 0.0, 0.5, 0.0, 0.7])
  )


def test_ties_go_to_the_lowest_index():
  magnitudes = tf.constant([1.0, 2.0, 1.0, 1.0, 0.0, 1.0])
  got = selective_sharing.largest_mask(magnitudes, 3).numpy()
  # 2.0 first, then the first two of the four 1.0s.
  np.testing.assert_array_equal(got, [True, True, True, False, False, False])


def test_zeros_can_be_selected_to_reach_count():
  magnitudes = tf.constant([0.0, 0.5, 0.0, 0.0])
  got = selective_sharing.largest_mask(magnitudes, 3).numpy()
  np.testing.assert_array_equal(got, [True, True, True, False])


def test_count_at_least_size_keeps_everything():
  values = tf.constant([0.0, -2.0, 3.0])
  np.testing.assert_array_equal(
    selective_sharing.share_largest(values, 3).numpy(), [0.0, -2.0, 3.0]
  )
  assert selective_sharing.largest_mask(tf.abs(values), 5).numpy().all()


@pytest.mark.parametrize('trial', range(40))
def test_matches_a_stable_sort(trial):
  rng = np.random.default_rng(trial)
  size = int(rng.integers(1, 300))
  if trial % 3 == 0:  # many exact ties, as clipping makes
    magnitudes = rng.choice([0.0, 0.25, 1e-30, 1.0, 3.0], size=size)
  elif trial % 3 == 1:  # values across the whole float range
    magnitudes = np.abs(rng.standard_normal(size)) * 10.0 ** rng.integers(
      -30, 30, size=size
    )
  else:
    magnitudes = rng.random(size)
  magnitudes = magnitudes.astype(np.float32)
  count = int(rng.integers(1, size + 1))
  got = selective_sharing.largest_mask(tf.constant(magnitudes), count).numpy()
  np.testing.assert_array_equal(got, _expected_mask(magnitudes, count))
  assert got.sum() == count


def test_large_tied_input_in_tf_function():
  # A third of the values at the clip bound: the pivot is a tie whose kept
  # part ends inside a block.
  rng = np.random.default_rng(7)
  values = np.clip(rng.standard_normal(300_001), -1.0, 1.0).astype(np.float32)
  count = 40_000
  share = tf.function(lambda v: selective_sharing.share_largest(v, count))
  got = share(tf.constant(values)).numpy()
  mask = _expected_mask(np.abs(values), count)
  np.testing.assert_array_equal(got, np.where(mask, values, 0.0))
