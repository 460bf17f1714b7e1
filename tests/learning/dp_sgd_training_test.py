"""Tests of tff_brats.learning.dp_sgd_training (plain TensorFlow, no TFF)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from tff_brats.learning import client_training
from tff_brats.learning import dp_sgd_training
from tff_brats.models import segresnet
from tff_brats.privacy import dp_sgd
from tff_brats.privacy import randomness

# The smallest SegResNet with a skip connection; no dropout, so the
# reference below need not replay the dropout keys.
MODEL_CONFIG = dict(
  init_filters=8, blocks_down=(1, 1), blocks_up=(1,), dropout_rate=0.0
)
CROP = (16, 16, 16)
NUM_CASES = 5
DATA_KEY = np.array([11, 12], np.int64)
LEARNING_RATE = 1e-3


@pytest.fixture(scope='module')
def shard_paths(tmp_path_factory):
  """Five brain-like cases in two shards (3 + 2)."""
  root = tmp_path_factory.mktemp('shards')
  cases = [
    (f'case{i}', *testing_utils.make_case(CROP, seed=i))
    for i in range(NUM_CASES)
  ]
  paths = [str(root / 'a.tfrecord'), str(root / 'b.tfrecord')]
  testing_utils.write_shard(paths[0], cases[:3])
  testing_utils.write_shard(paths[1], cases[3:])
  return paths


def _options(**overrides):
  values = dict(
    noise_multiplier=1.0,
    l2_norm_clip=0.5,
    sampling_probability=0.5,
    local_steps=4,
    noise_seed=3,
  )
  return dp_sgd_training.DpSgdOptions(**{**values, **overrides})


def _dataset(shard_paths, options, crops_per_case=2, data_key=DATA_KEY):
  return dp_sgd_training.make_dp_sgd_dataset(
    tf.constant(shard_paths),
    tf.constant(data_key),
    options,
    crop_size=CROP,
    crops_per_case=crops_per_case,
    tumour_crop_probability=1.0,
  )


def _elements(dataset):
  return [tuple(t.numpy() for t in element) for element in dataset]


def _lots(elements, local_steps):
  """{step: [case indices]}, checking the marker ends each step."""
  lots = {t: [] for t in range(local_steps)}
  markers = []
  for step, is_case, _, _, num_cases, _, dropout_key in elements:
    assert num_cases == NUM_CASES
    if is_case:
      assert step not in markers, 'a case after its step ended'
      lots[int(step)].append(int(dropout_key[1]))  # fold_in's data word
    else:
      markers.append(int(step))
  assert markers == list(range(local_steps))
  return lots


def _build_model(seed=0):
  tf.keras.utils.set_random_seed(seed)
  model = segresnet.SegResNet(**MODEL_CONFIG)
  model.build((None, *CROP, 4))
  return model


class TestDataset:
  def test_element_spec(self, shard_paths):
    dataset = _dataset(shard_paths, _options(), crops_per_case=3)
    assert dataset.element_spec == dp_sgd_training.element_spec(CROP, 3)
    images = dataset.element_spec[2]
    assert images.shape == [3, *CROP, 4]

  def test_lots_are_the_keyed_poisson_samples(self, shard_paths):
    # The code samples exactly what the accountant assumes: step t's lot is
    # dp_sgd.poisson_sample(fold_in(sampling key, t), n, q), the key coming
    # from the privacy key (here fixed by the noise seed), each case at
    # most once per step, and every step ends with a marker, empty or not.
    options = _options(local_steps=6)
    lots = _lots(_elements(_dataset(shard_paths, options)), 6)
    secret = dp_sgd_training.privacy_key(tf.constant(DATA_KEY), 3)
    sampling = randomness.substream(secret, dp_sgd.SAMPLING_STREAM)
    for step, lot in lots.items():
      mask = dp_sgd.poisson_sample(
        tf.random.experimental.stateless_fold_in(
          sampling, tf.constant(step, tf.int64)
        ),
        NUM_CASES,
        0.5,
      ).numpy()
      assert lot == list(np.flatnonzero(mask)), step
      assert len(set(lot)) == len(lot)
    # Both kinds of step occur here (q = 0.5), so the check has teeth.
    sizes = {len(lot) for lot in lots.values()}
    assert len(sizes) > 1

  def test_everyone_at_q_one(self, shard_paths):
    lots = _lots(
      _elements(_dataset(shard_paths, _options(sampling_probability=1.0))), 4
    )
    assert all(lot == list(range(NUM_CASES)) for lot in lots.values())

  def test_empty_lots_still_end_their_steps(self, shard_paths):
    # q = 1e-9: P(any case sampled in 4 steps) < 2e-8.
    options = _options(sampling_probability=1e-9)
    lots = _lots(_elements(_dataset(shard_paths, options)), 4)
    assert all(lot == [] for lot in lots.values())

  def test_fresh_lots_without_a_noise_seed(self, shard_paths):
    # The lot is secret: without a noise seed it comes from fresh entropy,
    # not from the data key (which the coordinator knows). Two draws of 20
    # Bernoulli(1/2) decisions agree with probability 2^-20 ≈ 1e-6.
    options = _options(noise_seed=None)
    a = _lots(_elements(_dataset(shard_paths, options)), 4)
    b = _lots(_elements(_dataset(shard_paths, options)), 4)
    assert a != b

  def test_a_noise_seed_makes_lots_and_keys_reproducible(self, shard_paths):
    a = _elements(_dataset(shard_paths, _options()))
    b = _elements(_dataset(shard_paths, _options()))
    for x, y in zip(a, b, strict=True):
      for u, v in zip(x, y, strict=True):
        np.testing.assert_array_equal(u, v)
    other = _lots(_elements(_dataset(shard_paths, _options(noise_seed=4))), 4)
    assert other != _lots(a, 4)


def _reference_update(model, initial, elements, *, clip, q, optimizer):
  """DP-SGD without noise, by hand: per-case gradients, clipped, summed,
  divided by q·n, applied by a fresh Adam at each marker."""
  for variable, value in zip(model.trainable_variables, initial, strict=True):
    variable.assign(value)
  loss_fn = client_training.make_loss('dice_bce')
  lot = None
  for _, is_case, images, regions, num_cases, _, _ in elements:
    if is_case:
      with tf.GradientTape() as tape:
        loss = loss_fn(regions, model(images, training=True))
      gradients = tape.gradient(loss, model.trainable_variables)
      norm = np.sqrt(sum(float(np.sum(g.numpy() ** 2)) for g in gradients))
      scale = min(1.0, clip / norm)
      scaled = [g.numpy() * scale for g in gradients]
      lot = (
        scaled
        if lot is None
        else [a + b for a, b in zip(lot, scaled, strict=True)]
      )
    else:
      if lot is None:
        lot = [np.zeros(v.shape, np.float32) for v in model.trainable_variables]
      mean = [g / (q * num_cases) for g in lot]
      optimizer.apply_gradients(
        zip(mean, model.trainable_variables, strict=True)
      )
      lot = None
  return [
    w - v.numpy()
    for w, v in zip(initial, model.trainable_variables, strict=True)
  ]


class TestTrainer:
  @pytest.mark.parametrize('clip', [1e-3, 1e3], ids=['clipped', 'unclipped'])
  def test_matches_hand_computed_dp_sgd_without_noise(self, shard_paths, clip):
    options = _options(noise_multiplier=0.0, l2_norm_clip=clip, local_steps=3)
    elements = _elements(_dataset(shard_paths, options))
    model = _build_model()
    initial = [v.numpy() for v in model.trainable_variables]
    trainer = dp_sgd_training.DpSgdTrainer(
      model, options, learning_rate=LEARNING_RATE
    )
    dataset = tf.data.Dataset.from_tensor_slices(
      tuple(np.stack(column) for column in zip(*elements, strict=True))
    )
    out = trainer.train(initial, dataset)
    assert float(out['steps']) == 3.0
    assert int(out['non_finite']) == 0

    reference_model = _build_model(seed=1)
    expected = _reference_update(
      reference_model,
      initial,
      elements,
      clip=clip,
      q=0.5,
      optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
    )
    actual = [u.numpy() for u in out['update']]
    scale = max(float(np.max(np.abs(e))) for e in expected)
    for a, e in zip(actual, expected, strict=True):
      np.testing.assert_allclose(a, e, rtol=0, atol=1e-3 * scale)
    # The check can tell clipping apart: the other clip level gives another
    # update (Adam's first steps are nearly sign steps, so only their later
    # steps differ; the difference is well above the tolerance).
    other = _reference_update(
      _build_model(seed=1),
      initial,
      elements,
      clip=1e3 if clip < 1 else 1e-3,
      q=0.5,
      optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
    )
    difference = max(
      float(np.max(np.abs(a - o))) for a, o in zip(actual, other, strict=True)
    )
    assert difference > 1e-2 * scale

  def test_noise_changes_the_update_and_the_seed_fixes_it(self, shard_paths):
    # q = 1: every case in every lot whatever the key, so two noise seeds
    # differ only in the noise they draw.
    model = _build_model()
    initial = [v.numpy() for v in model.trainable_variables]
    options = _options(noise_multiplier=2.0, sampling_probability=1.0)
    trainer = dp_sgd_training.DpSgdTrainer(
      model, options, learning_rate=LEARNING_RATE
    )

    def update(noise_seed):
      seeded = dataclasses.replace(options, noise_seed=noise_seed)
      out = trainer.train(initial, _dataset(shard_paths, seeded))
      return [u.numpy() for u in out['update']]

    first, again, other = update(3), update(3), update(4)
    for a, b in zip(first, again, strict=True):
      np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(first, other, strict=True))

  def test_empty_lots_without_noise_leave_the_model(self, shard_paths):
    options = _options(noise_multiplier=0.0, sampling_probability=1e-9)
    model = _build_model()
    initial = [v.numpy() for v in model.trainable_variables]
    trainer = dp_sgd_training.DpSgdTrainer(
      model, options, learning_rate=LEARNING_RATE
    )
    out = trainer.train(initial, _dataset(shard_paths, options))
    assert float(out['steps']) == 4.0  # every step counts, empty or not
    for u in out['update']:
      np.testing.assert_array_equal(u.numpy(), np.zeros_like(u.numpy()))

  def test_a_non_finite_case_contributes_nothing(self, shard_paths):
    # One case's NaN gradient must not stop the step (that would reveal
    # the case): it counts as zero, as if it were not in the lot.
    options = _options(noise_multiplier=0.0, local_steps=2)
    elements = _elements(_dataset(shard_paths, options))
    first_case = next(i for i, e in enumerate(elements) if e[1])
    poisoned = list(elements)
    images = elements[first_case][2].copy()
    images[0, 0, 0, 0, 0] = np.nan
    poisoned[first_case] = (
      *elements[first_case][:2],
      images,
      *elements[first_case][3:],
    )
    without = elements[:first_case] + elements[first_case + 1 :]
    model = _build_model()
    initial = [v.numpy() for v in model.trainable_variables]
    trainer = dp_sgd_training.DpSgdTrainer(
      model, options, learning_rate=LEARNING_RATE
    )

    def train(rows):
      dataset = tf.data.Dataset.from_tensor_slices(
        tuple(np.stack(column) for column in zip(*rows, strict=True))
      )
      out = trainer.train(initial, dataset)
      return out, [u.numpy() for u in out['update']]

    out, poisoned_update = train(poisoned)
    _, clean_update = train(without)
    assert int(out['non_finite']) == 0
    for a, b in zip(poisoned_update, clean_update, strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    assert any(np.any(u != 0) for u in clean_update)

  def test_rejects_other_options(self):
    with pytest.raises(TypeError, match='options must be DpSgdOptions'):
      dp_sgd_training.DpSgdTrainer(
        _build_model(), {'noise_multiplier': 1.0}, learning_rate=1e-3
      )


class TestOptions:
  @pytest.mark.parametrize(
    'overrides, message',
    [
      (dict(sampling_probability=0.0), 'sampling_probability must be in'),
      (dict(local_steps=0), 'local_steps must be'),
      (dict(noise_seed=-1), 'noise_seed must be'),
      (dict(l2_norm_clip=-1.0), 'l2_norm_clip must be'),
    ],
  )
  def test_bad_options(self, overrides, message):
    with pytest.raises(ValueError, match=message):
      _options(**overrides)
