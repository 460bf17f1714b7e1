"""Tests for tff_brats.models.layers."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.models import layers

# ------------------------------------------------------------ upsampling ----


def _trilinear_reference(x):
  """×2 trilinear, align_corners=False, from PyTorch's definition.

  For each output voxel, the source coordinate per axis is
  s = max((o + 0.5) / 2 - 0.5, 0), i0 = floor(s), i1 = min(i0 + 1, n - 1),
  and the value is the sum over the 8 corners of the product of the
  per-axis weights (1 - (s - i0) at i0, s - i0 at i1).
  """
  batch, d, h, w, c = x.shape
  out = np.zeros((batch, 2 * d, 2 * h, 2 * w, c), np.float64)

  def taps(o, n):
    s = max((o + 0.5) / 2 - 0.5, 0.0)
    i0 = int(np.floor(s))
    frac = s - i0
    return [(i0, 1 - frac), (min(i0 + 1, n - 1), frac)]

  for od in range(2 * d):
    for oh in range(2 * h):
      for ow in range(2 * w):
        for (i, a), (j, b), (k, g) in itertools.product(
          taps(od, d), taps(oh, h), taps(ow, w)
        ):
          out[:, od, oh, ow] += a * b * g * x[:, i, j, k]
  return out


def test_trilinear_upsampling_by_hand_along_one_axis():
  # [1, 2, 4] -> sources -0.25 (clamped to 0), 0.25, 0.75, 1.25, 1.75, 2.25
  # (upper tap clamped): 1, ¾·1 + ¼·2, ¼·1 + ¾·2, ¾·2 + ¼·4, ¼·2 + ¾·4, 4.
  x = tf.reshape(tf.constant([1.0, 2.0, 4.0]), [1, 3, 1, 1, 1])
  out = layers.TrilinearUpsampling3D()(x)
  assert out.shape == (1, 6, 2, 2, 1)
  np.testing.assert_allclose(
    out.numpy()[0, :, 0, 0, 0], [1.0, 1.25, 1.75, 2.5, 3.5, 4.0]
  )
  # Constant along the other two axes.
  np.testing.assert_allclose(
    out.numpy()[0, :, 1, 1, 0], out.numpy()[0, :, 0, 0, 0]
  )


def test_trilinear_upsampling_matches_numpy_reference():
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 5, 2))
  out = layers.TrilinearUpsampling3D()(tf.constant(x, tf.float32))
  assert out.shape == (2, 6, 8, 10, 2)
  np.testing.assert_allclose(out.numpy(), _trilinear_reference(x), atol=1e-5)


def test_trilinear_upsampling_gradient_is_the_adjoint():
  # The layer is linear: its gradient must be the transpose of the
  # reference operator, built column by column from basis volumes.
  shape = (1, 2, 3, 2, 1)
  size = int(np.prod(shape))
  columns = [
    _trilinear_reference(np.eye(size)[i].reshape(shape)).ravel()
    for i in range(size)
  ]
  operator = np.stack(columns, axis=1)  # [out, in]
  upstream = np.random.default_rng(1).normal(size=operator.shape[0])
  x = tf.zeros(shape)
  with tf.GradientTape() as tape:
    tape.watch(x)
    out = layers.TrilinearUpsampling3D()(x)
    value = tf.reduce_sum(
      out * tf.constant(upstream.reshape(out.shape), tf.float32)
    )
  grad = tape.gradient(value, x).numpy().ravel()
  np.testing.assert_allclose(grad, operator.T @ upstream, atol=1e-5)


def test_trilinear_upsampling_with_unknown_shape():
  layer = layers.TrilinearUpsampling3D()
  fn = tf.function(
    layer, input_signature=[tf.TensorSpec([None, None, None, None, 2])]
  )
  x = np.random.default_rng(2).normal(size=(1, 2, 3, 4, 2))
  np.testing.assert_allclose(
    fn(tf.constant(x, tf.float32)).numpy(), _trilinear_reference(x), atol=1e-5
  )


# ------------------------------------------------------------ group norm ----


def _keras_reference(x, groups, gamma, beta, relu, upstream):
  """Output and gradients (x, γ, β) of Keras' GroupNormalization (+ ReLU)."""
  keras = tf.keras.layers.GroupNormalization(groups, epsilon=1e-5)
  keras.build(x.shape)
  keras.gamma.assign(gamma)
  keras.beta.assign(beta)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = keras(x)
    if relu:
      y = tf.nn.relu(y)
    value = tf.reduce_sum(y * upstream)
  grads = tape.gradient(value, [x, keras.gamma, keras.beta])
  return [t.numpy() for t in [y, *grads]]


def _ours(x, groups, gamma, beta, relu, upstream, signature=None):
  norm = layers.GroupNorm(groups, 1e-5, activation='relu' if relu else None)
  norm.build(x.shape)
  norm.gamma.assign(gamma)
  norm.beta.assign(beta)

  def run(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      value = tf.reduce_sum(norm(x) * upstream)
    return [norm(x), *tape.gradient(value, [x, norm.gamma, norm.beta])]

  if signature is not None:
    run = tf.function(run, input_signature=[signature])
  return [t.numpy() for t in run(x)]


@pytest.mark.parametrize(
  'shape,groups,offset',
  [
    ((2, 4, 4, 4, 8), 4, 0.0),
    ((1, 4, 4, 4, 8), 4, 0.0),  # batch 1: the fused kernels with ReLU
    ((1, 2, 3, 4, 16), 8, 5.0),  # |mean| ≫ std within the tolerance
    ((3, 2, 2, 2, 6), 3, -2.0),
    ((1, 4, 4, 4, 4), 1, 0.0),  # one group: layer norm over the volume
    ((1, 4, 4, 4, 4), 4, 0.0),  # one channel per group: instance norm
  ],
)
@pytest.mark.parametrize('relu', [False, True])
def test_group_norm_matches_keras_forward_and_gradients(
  shape, groups, offset, relu
):
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=shape) * 2 + offset, tf.float32)
  upstream = tf.constant(rng.normal(size=shape), tf.float32)
  gamma = rng.normal(size=shape[-1])
  beta = rng.normal(size=shape[-1])
  want = _keras_reference(x, groups, gamma, beta, relu, upstream)
  got = _ours(x, groups, gamma, beta, relu, upstream)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize('batch', [1, 2])
def test_group_norm_relu_with_unknown_batch(batch):
  # Traced with an unknown batch size, the layer picks the fused kernels
  # (batch 1) or the general path (batch 2) when it runs.
  rng = np.random.default_rng(4)
  shape = (batch, 4, 4, 4, 8)
  x = tf.constant(rng.normal(size=shape), tf.float32)
  upstream = tf.constant(rng.normal(size=shape), tf.float32)
  gamma = rng.normal(size=8)
  beta = rng.normal(size=8)
  want = _keras_reference(x, 2, gamma, beta, True, upstream)
  got = _ours(
    x, 2, gamma, beta, True, upstream, tf.TensorSpec([None, 4, 4, 4, 8])
  )
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-4)


def test_group_norm_normalises_each_group():
  x = tf.constant(
    np.random.default_rng(5).normal(size=(2, 4, 4, 4, 6)) * 3 + 1, tf.float32
  )
  y = layers.GroupNorm(3)(x).numpy().reshape(2, -1, 3, 2)
  np.testing.assert_allclose(y.mean(axis=(1, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(1, 3)), 1, atol=1e-3)


def test_group_norm_config_round_trip():
  norm = layers.GroupNorm(4, 1e-3, activation='relu', name='n')
  config = norm.get_config()
  assert (config['groups'], config['epsilon'], config['activation']) == (
    4,
    1e-3,
    'relu',
  )
  assert layers.GroupNorm.from_config(config).get_config() == config
  upsampling = layers.TrilinearUpsampling3D(name='u')
  assert (
    layers.TrilinearUpsampling3D.from_config(upsampling.get_config()).name
    == 'u'
  )


def test_group_norm_bad_arguments():
  with pytest.raises(ValueError, match=r'multiple of groups=4\. Found 6\.'):
    layers.GroupNorm(4)(tf.zeros([1, 2, 2, 2, 6]))
  with pytest.raises(
    ValueError, match=r'groups must be a positive integer\. Found 0\.'
  ):
    layers.GroupNorm(0)
  with pytest.raises(
    ValueError, match=r'epsilon must be a positive number\. Found 0\.0\.'
  ):
    layers.GroupNorm(2, 0.0)
  with pytest.raises(
    ValueError, match=r"activation must be one of None, relu\. Found 'gelu'\."
  ):
    layers.GroupNorm(2, activation='gelu')
