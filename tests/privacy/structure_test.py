"""Tests for tff_brats.privacy.structure."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.privacy import structure


def _mixed():
  return collections.OrderedDict(
    kernel=tf.reshape(tf.range(24, dtype=tf.float32), [2, 3, 4]),
    bias=[tf.constant([-1.5, 2.5]), tf.constant(7.0)],
    half=tf.constant([[0.5, -0.25]], tf.float16),
    # Values exact in float32: the flat vector is float32.
    double=tf.constant([0.125, 3.0], tf.float64),
  )


def test_flatten_concatenates_leaves_in_nest_order_row_major():
  vector, spec = structure.flatten(_mixed())
  # tf.nest sorts dict keys: bias (list of 2), double, half, kernel.
  expected = np.concatenate(
    [[-1.5, 2.5], [7.0], [0.125, 3.0], [0.5, -0.25], np.arange(24)]
  ).astype(np.float32)
  np.testing.assert_array_equal(vector.numpy(), expected)
  assert vector.dtype == tf.float32
  assert spec.num_values == 2 + 1 + 2 + 2 + 24
  assert spec.sizes == (2, 1, 2, 2, 24)


def test_round_trip_restores_structure_shapes_and_dtypes():
  original = _mixed()
  vector, spec = structure.flatten(original)
  restored = structure.unflatten(vector, spec)
  assert isinstance(restored, collections.OrderedDict)
  assert list(restored) == list(original)
  tf.nest.assert_same_structure(restored, original)
  for got, want in zip(
    tf.nest.flatten(restored), tf.nest.flatten(original), strict=True
  ):
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_float64_goes_through_float32():
  vector, spec = structure.flatten([tf.constant([0.1], tf.float64)])
  restored = structure.unflatten(vector, spec)[0]
  assert restored.dtype == tf.float64
  assert restored.numpy()[0] == np.float64(np.float32(0.1))


def test_single_tensor_and_variables():
  vector, spec = structure.flatten(tf.ones([3, 2]))
  assert vector.shape == [6]
  assert structure.unflatten(vector * 2, spec).shape == [3, 2]
  variables = [tf.Variable(tf.ones([2, 2])), tf.Variable([5.0])]
  vector, spec = structure.flatten(variables)
  np.testing.assert_array_equal(vector.numpy(), [1, 1, 1, 1, 5])


def test_empty_structure_has_no_values():
  vector, spec = structure.flatten([])
  assert vector.shape == [0]
  assert spec.num_values == 0
  assert structure.unflatten(vector, spec) == []


def test_works_in_tf_function():
  original = _mixed()

  @tf.function
  def round_trip(nest):
    vector, spec = structure.flatten(nest)
    return structure.unflatten(vector + 1.0, spec)

  got = round_trip(original)
  np.testing.assert_array_equal(
    got['kernel'].numpy(), original['kernel'].numpy() + 1
  )


def test_rejects_dynamic_shapes():
  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
  def flat(x):
    return structure.flatten([x])[0]

  with pytest.raises(ValueError, match=r'static shapes. Found shape \(None,\)'):
    flat.get_concrete_function()


def test_rejects_non_float_leaves():
  with pytest.raises(
    ValueError, match='floating-point tensors. Found dtype int32 at leaf 1.'
  ):
    structure.flatten([tf.ones([2]), tf.constant([1, 2])])


def test_unflatten_rejects_wrong_length():
  _, spec = structure.flatten([tf.ones([2, 2])])
  with pytest.raises(ValueError, match=r'shape \[4\]. Found \(5,\).'):
    structure.unflatten(tf.ones([5]), spec)
