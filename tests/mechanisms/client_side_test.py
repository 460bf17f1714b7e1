"""Tests of the client-side mechanisms' `privatize` (no privacy, selective
sharing, SVT): exact releases by hand, the report, fresh randomness, and
argument checks. The mechanism mathematics are tested in
tests/privacy/{selective_sharing,sparse_vector,client_release}_test.py.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from tff_brats import mechanisms
from tff_brats.privacy import client_release

_SVT = dict(
  shared_fraction=0.5,
  clip_bound=1.0,
  selection_epsilon=1.0,
  release_epsilon=0.5,
  threshold=0.2,
)


def _update():
  """Two tensors, 8 values: [[0.5, -2, 0.1], [3, -0.05, 0]] and [1, -0.7]."""
  return [
    tf.constant([[0.5, -2.0, 0.1], [3.0, -0.05, 0.0]]),
    tf.constant([1.0, -0.7]),
  ]


def _flat(nest):
  return np.concatenate([np.ravel(t.numpy()) for t in tf.nest.flatten(nest)])


# ------------------------------------------------- privatize: exact cases ----


def test_no_privacy_returns_the_update():
  update = _update()
  private, report = mechanisms.NoPrivacy().privatize(update, 3)
  np.testing.assert_array_equal(_flat(private), _flat(update))
  assert {k: float(v) for k, v in report.items() if k != 'noisy_threshold'} == {
    'released': 8,
    'clipped_fraction': 0.0,
    'epsilon': math.inf,
    'num_values': 8,
    'shared_count': 8,
    'passed': 0,
  }
  assert math.isnan(float(report['noisy_threshold']))


@pytest.mark.parametrize(
  'mechanism',
  [
    mechanisms.NoPrivacy(),
    mechanisms.SelectiveSharing(0.5, 1.0),
    mechanisms.SparseVector(**_SVT),
  ],
)
def test_report_has_the_same_keys_and_dtypes_for_every_mechanism(mechanism):
  _, report = mechanism.privatize(_update(), 2, seed=[1, 2])
  assert tuple(report) == client_release.REPORT_KEYS
  dtypes = {k: v.dtype for k, v in report.items()}
  assert dtypes == {
    'released': tf.int32,
    'clipped_fraction': tf.float32,
    'noisy_threshold': tf.float32,
    'epsilon': tf.float32,
    'num_values': tf.int32,
    'shared_count': tf.int32,
    'passed': tf.int32,
  }
  assert all(v.shape == [] for v in report.values())


def test_selective_sharing_with_everything_shared_is_the_clipped_update():
  update = _update()
  config = mechanisms.SelectiveSharing(1.0, 1.0, normalize_by_steps=False)
  private, report = config.privatize(update, 5)
  np.testing.assert_array_equal(
    _flat(private), np.clip(_flat(update), -1.0, 1.0)
  )
  # |-2| and |3| exceed γ = 1: 2 of 8.
  assert float(report['clipped_fraction']) == 0.25
  assert int(report['released']) == 8


def test_selective_sharing_normalised_clips_at_n_gamma():
  # n·clip(ΔW/n, -γ, γ) = clip(ΔW, -nγ, nγ): with n = 2, γ = 1, the bound is
  # 2, so only 3.0 is clipped (to 2.0) and every other value is exact.
  update = _update()
  config = mechanisms.SelectiveSharing(1.0, 1.0)
  private, report = config.privatize(update, 2)
  np.testing.assert_array_equal(
    _flat(private), np.float32([0.5, -2.0, 0.1, 2.0, -0.05, 0.0, 1.0, -0.7])
  )
  assert float(report['clipped_fraction']) == 1 / 8


def test_selective_sharing_keeps_the_c_largest():
  # q = 0.3 of 8: c = ⌈2.4⌉ = 3. Clipped at 1: |w| = .5 1 .1 1 .05 0 1 .7;
  # the three 1s (indices 1, 3, 6) are kept, as their clipped values.
  config = mechanisms.SelectiveSharing(0.3, 1.0, normalize_by_steps=False)
  private, report = config.privatize(_update(), 1)
  np.testing.assert_array_equal(
    _flat(private), np.float32([0, -1, 0, 1, 0, 0, 1, 0])
  )
  assert int(report['shared_count']) == 3
  assert int(report['released']) == 3
  # The structure comes back.
  assert private[0].shape == [2, 3] and private[1].shape == [2]


def test_selective_sharing_nan_is_zero_and_inf_is_clipped():
  update = [tf.constant([np.nan, np.inf, -np.inf, 0.5])]
  config = mechanisms.SelectiveSharing(0.75, 1.0, normalize_by_steps=False)
  private, report = config.privatize(update, 1)
  np.testing.assert_array_equal(_flat(private), np.float32([0, 1, -1, 0.5]))
  assert float(report['clipped_fraction']) == 0.5


def test_svt_report_by_hand():
  config = mechanisms.SparseVector(**_SVT)
  private, report = config.privatize(_update(), 2, seed=[4, 5])
  values = _flat(private)
  assert int(report['released']) == np.count_nonzero(values) <= 4
  assert int(report['passed']) >= int(report['released'])
  assert float(report['epsilon']) == 1.5
  assert int(report['num_values']) == 8
  assert int(report['shared_count']) == 4
  # |ΔW| > n·γ = 2: only 3.0.
  assert float(report['clipped_fraction']) == 1 / 8
  # Released values lie in [-nγ, nγ].
  assert np.all(np.abs(values) <= 2.0)
  assert np.isfinite(float(report['noisy_threshold']))


def test_svt_releases_noisy_values_scaled_by_steps():
  # Little noise everywhere: every value passes τ, c = 8, and the release
  # is n·clip(ΔW/n + small noise, -γ, γ).
  config = mechanisms.SparseVector(
    1.0, 1.0, 1e5, 1e9, 0.01, normalize_by_steps=True
  )
  update = [tf.constant([0.5, -2.0, 0.1, 3.0])]
  private, report = config.privatize(update, 2, seed=[1, 1])
  np.testing.assert_allclose(_flat(private), [0.5, -2.0, 0.1, 2.0], atol=1e-4)
  assert int(report['released']) == 4


# ------------------------------------------------------------ randomness ----


def test_explicit_seeds_reproduce_and_differ():
  config = mechanisms.SparseVector(**_SVT)
  a = config.privatize(_update(), 2, seed=[7, 8])
  b = config.privatize(_update(), 2, seed=tf.constant([7, 8]))
  c = config.privatize(_update(), 2, seed=[7, 9])
  np.testing.assert_array_equal(_flat(a[0]), _flat(b[0]))
  assert float(a[1]['noisy_threshold']) == float(b[1]['noisy_threshold'])
  assert float(a[1]['noisy_threshold']) != float(c[1]['noisy_threshold'])


def test_no_seed_gives_fresh_noise_on_every_call():
  config = mechanisms.SparseVector(**_SVT)
  thresholds = {
    float(config.privatize(_update(), 2)[1]['noisy_threshold'])
    for _ in range(3)
  }
  assert len(thresholds) == 3

  @tf.function
  def privatize(update):
    return config.privatize(update, 2)

  first = privatize(_update())[1]['noisy_threshold']
  second = privatize(_update())[1]['noisy_threshold']
  assert float(first) != float(second)


def test_fresh_noise_survives_a_global_seed():
  # Trainers call tf.keras.utils.set_random_seed; two separately traced
  # functions must still draw different noise.
  config = mechanisms.SparseVector(**_SVT)
  try:
    tf.random.set_seed(1)
    draws = [
      float(
        tf.function(lambda u: config.privatize(u, 2))(_update())[1][
          'noisy_threshold'
        ]
      )
      for _ in range(2)
    ]
  finally:
    tf.random.set_seed(None)
  assert draws[0] != draws[1]


def test_graph_mode_session_runs_are_fresh():
  # TFF traces computations into a tf.Graph: each run of that graph must
  # draw new noise.
  config = mechanisms.SparseVector(**_SVT)
  graph = tf.Graph()
  with graph.as_default():
    steps = tf.compat.v1.placeholder(tf.float32, [])
    private, report = config.privatize(_update(), steps)
  with tf.compat.v1.Session(graph=graph) as session:
    draws = [
      session.run(report['noisy_threshold'], {steps: 2.0}) for _ in range(2)
    ]
    with pytest.raises(tf.errors.InvalidArgumentError, match='local_steps'):
      session.run(private, {steps: 0.0})
  assert draws[0] != draws[1]


# ------------------------------------------------------------- arguments ----


@pytest.mark.parametrize('steps', [0, -1, 0.0, math.nan, math.inf, True, 'ten'])
def test_privatize_rejects_bad_local_steps(steps):
  with pytest.raises(ValueError, match='local_steps must be a positive finite'):
    mechanisms.SelectiveSharing(0.5, 1.0).privatize(_update(), steps)


def test_privatize_rejects_non_scalar_steps():
  with pytest.raises(ValueError, match='local_steps must be a real scalar'):
    mechanisms.SelectiveSharing(0.5, 1.0).privatize(
      _update(), tf.constant([1.0, 2.0])
    )


def test_privatize_checks_tensor_steps_when_it_runs():
  with pytest.raises(tf.errors.InvalidArgumentError, match='local_steps'):
    mechanisms.SparseVector(**_SVT).privatize(_update(), tf.constant(-3))


def test_steps_are_not_checked_without_normalisation():
  config = mechanisms.SelectiveSharing(0.5, 1.0, normalize_by_steps=False)
  config.privatize(_update(), 0)


def test_privatize_rejects_bad_seeds_and_updates():
  with pytest.raises(ValueError, match='seed must be an int64 tensor'):
    mechanisms.SparseVector(**_SVT).privatize(_update(), 1, seed=5)
  with pytest.raises(ValueError, match='update must hold at least one value'):
    mechanisms.SelectiveSharing(0.5, 1.0).privatize([], 1)
  with pytest.raises(ValueError, match='floating-point tensors'):
    mechanisms.SelectiveSharing(0.5, 1.0).privatize([tf.constant([1, 2])], 1)
  with pytest.raises(ValueError, match='update must hold at least one value'):
    mechanisms.NoPrivacy().privatize([], 1)
