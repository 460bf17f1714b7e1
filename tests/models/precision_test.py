"""Tests for tff_brats.models.precision (on CPU)."""

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.models import layers
from tff_brats.models import losses
from tff_brats.models import precision
from tff_brats.models import segresnet

_TINY = dict(init_filters=4, norm_groups=2, blocks_down=(1, 1), blocks_up=(1,))

# After tf.keras.utils.set_random_seed, Keras 2.14 draws dropout seeds with
# random.randint(1, 1e9), which Python 3.11 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
  'ignore:non-integer arguments to randrange:DeprecationWarning'
)


@pytest.fixture(autouse=True)
def _reset_global_policy():
  """Every test starts and ends with the float32 policy."""
  tf.keras.mixed_precision.set_global_policy('float32')
  yield
  tf.keras.mixed_precision.set_global_policy('float32')


def _batch(size=8):
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(size=(1, size, size, size, 4)), tf.float32)
  y = tf.constant(rng.uniform(size=(1, size, size, size, 3)) > 0.7, tf.float32)
  return x, y


@pytest.mark.parametrize(
  'policy,compute',
  [('mixed_float16', tf.float16), ('mixed_bfloat16', tf.bfloat16)],
)
def test_mixed_model_dtypes(policy, compute):
  with precision.precision_scope(policy):
    model = segresnet.SegResNet(**_TINY)
  assert precision.current_precision() == 'float32'  # restored
  x, _ = _batch()
  probs = model(x)
  assert probs.dtype == tf.float32
  # Every variable is float32 except the dropout layer's int64 random key.
  assert all(
    v.dtype == tf.float32 for v in model.variables if v is not model.dropout.key
  )
  assert model.dropout.key.dtype == tf.int64
  convs = [
    layer
    for layer in model.submodules
    if isinstance(layer, tf.keras.layers.Conv3D)
  ]
  assert len(convs) == 10  # 1 + 2 + 1 + 2 + 1 + 2 + 1
  assert {layer.compute_dtype for layer in convs} == {compute.name}
  assert {layer.variable_dtype for layer in convs} == {'float32'}
  assert model.head.sigmoid.compute_dtype == 'float32'
  # Intermediate features are in the compute type.
  features, skips = model.encode(x)
  assert features.dtype == compute
  assert all(s.dtype == compute for s in skips)
  # And they approximate the float32 model with the same weights.
  reference = segresnet.SegResNet(**_TINY)
  reference(x)
  reference.set_weights(model.get_weights())
  tolerance = {tf.float16: 5e-3, tf.bfloat16: 3e-2}[compute]
  np.testing.assert_allclose(
    probs.numpy(), reference(x).numpy(), atol=tolerance
  )


def test_group_norm_variables_are_never_auto_cast():
  with precision.precision_scope('mixed_bfloat16'):
    norm = layers.GroupNorm(2)
    out = norm(tf.ones([1, 2, 2, 2, 4]))
  assert out.dtype == tf.bfloat16
  for variable in (norm.gamma, norm.beta):
    assert variable.dtype == tf.float32
    assert type(variable).__name__ != 'AutoCastVariable'


# float32 training is covered by segresnet_test's blob test.
@pytest.mark.parametrize('policy', ['mixed_float16', 'mixed_bfloat16'])
def test_train_step_runs_and_updates(policy):
  tf.keras.utils.set_random_seed(0)
  with precision.precision_scope(policy):
    model = segresnet.SegResNet(**_TINY)
  optimizer = precision.wrap_optimizer(tf.keras.optimizers.Adam(1e-3), policy)
  assert isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer) == (
    policy == 'mixed_float16'
  )
  loss_fn = losses.SoftDiceLoss()
  x, y = _batch()
  model(x)
  before = [v.numpy() for v in model.trainable_variables]

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True))
    grads = precision.scaled_gradients(
      optimizer, tape, loss, model.trainable_variables
    )
    optimizer.apply_gradients(
      zip(grads, model.trainable_variables, strict=True)
    )
    return loss, grads

  loss, grads = step()
  assert loss.dtype == tf.float32
  assert np.isfinite(float(loss))
  assert all(g.dtype == tf.float32 for g in grads)
  assert all(np.all(np.isfinite(g.numpy())) for g in grads)
  changed = [
    not np.array_equal(b, v.numpy())
    for b, v in zip(before, model.trainable_variables, strict=True)
  ]
  assert all(changed)


def test_scaled_gradients_undo_the_loss_scale():
  tf.keras.utils.set_random_seed(0)
  model = segresnet.SegResNet(**_TINY)
  x, y = _batch()
  model(x)
  plain = tf.keras.optimizers.Adam()
  scaled = precision.wrap_optimizer(tf.keras.optimizers.Adam(), 'mixed_float16')
  assert float(scaled.loss_scale) == 2.0**15
  with tf.GradientTape(persistent=True) as tape:
    loss = losses.SoftDiceLoss()(y, model(x))
  variables = model.trainable_variables
  expected = precision.scaled_gradients(plain, tape, loss, variables)
  got = precision.scaled_gradients(scaled, tape, loss, variables)
  for g, e in zip(got, expected, strict=True):
    np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-9)


def test_wrap_optimizer_only_for_float16():
  adam = tf.keras.optimizers.Adam()
  assert precision.wrap_optimizer(adam, 'float32') is adam
  assert precision.wrap_optimizer(adam, 'mixed_bfloat16') is adam
  wrapped = precision.wrap_optimizer(adam, 'mixed_float16')
  assert isinstance(wrapped, tf.keras.mixed_precision.LossScaleOptimizer)
  assert precision.wrap_optimizer(wrapped, 'mixed_float16') is wrapped


def test_scope_restores_the_policy_after_an_error():
  precision.set_precision('mixed_bfloat16')
  with pytest.raises(RuntimeError, match='boom'):
    with precision.precision_scope('mixed_float16'):
      assert precision.current_precision() == 'mixed_float16'
      raise RuntimeError('boom')
  assert precision.current_precision() == 'mixed_bfloat16'


def test_recommended_precision():
  recommended = precision.recommended_precision
  assert recommended('GPU') == 'mixed_float16'
  assert recommended('GPU', cpu_flags={'avx512_bf16'}) == 'mixed_float16'
  assert (
    recommended('CPU', cpu_flags={'avx2', 'avx512_bf16'}) == 'mixed_bfloat16'
  )
  assert recommended('CPU', cpu_flags={'amx_bf16'}) == 'mixed_bfloat16'
  assert recommended('CPU', cpu_flags={'avx2', 'avx512f'}) == 'float32'
  assert recommended('CPU', cpu_flags=()) == 'float32'
  assert recommended() in precision.PRECISIONS
  with pytest.raises(
    ValueError, match=r"device_type must be one of GPU, CPU\. Found 'TPU'\."
  ):
    precision.recommended_precision('TPU')


@pytest.mark.parametrize('bad', ['float16', 'mixed', '', None])
def test_bad_precision(bad):
  message = (
    r'precision must be one of float32, mixed_float16, mixed_bfloat16\. '
    rf'Found {bad!r}\.'
  )
  with pytest.raises(ValueError, match=message):
    precision.set_precision(bad)
  with pytest.raises(ValueError, match=message):
    with precision.precision_scope(bad):
      pass
  with pytest.raises(ValueError, match=message):
    precision.wrap_optimizer(tf.keras.optimizers.Adam(), bad)
  assert precision.current_precision() == 'float32'
