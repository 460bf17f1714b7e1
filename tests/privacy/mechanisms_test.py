"""Tests for tff_brats.privacy.mechanisms."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.privacy import mechanisms

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


# -------------------------------------------------------- configurations ----


def test_names_and_epsilons():
  assert mechanisms.NoPrivacy().name == 'none'
  assert mechanisms.SelectiveSharing(0.1, 1.0).name == 'selective_sharing'
  svt = mechanisms.SparseVectorTechnique(**_SVT)
  assert svt.name == 'sparse_vector'
  assert svt.epsilon_per_round == 1.5
  assert mechanisms.SelectiveSharing(0.1, 1.0).epsilon_per_round == math.inf
  assert mechanisms.NoPrivacy().epsilon_per_round == math.inf


def test_numbers_are_stored_as_floats():
  svt = mechanisms.SparseVectorTechnique(1, 2, 3, 4, 0)
  assert svt == mechanisms.SparseVectorTechnique(1.0, 2.0, 3.0, 4.0, 0.0)
  assert all(
    isinstance(getattr(svt, f), float)
    for f in ('shared_fraction', 'clip_bound', 'threshold')
  )


def test_configs_are_frozen():
  config = mechanisms.SelectiveSharing(0.1, 1.0)
  with pytest.raises(AttributeError):
    config.clip_bound = 2.0


@pytest.mark.parametrize(
  'field,value,message',
  [
    (
      'shared_fraction',
      0.0,
      r'shared_fraction must be in \(0, 1\]. Found 0.0.',
    ),
    (
      'shared_fraction',
      1.5,
      r'shared_fraction must be in \(0, 1\]. Found 1.5.',
    ),
    ('shared_fraction', float('nan'), 'shared_fraction must be in'),
    ('shared_fraction', '0.5', "Found '0.5'."),
    (
      'clip_bound',
      0.0,
      'clip_bound must be a positive finite number. Found 0.0.',
    ),
    ('clip_bound', -1.0, 'clip_bound must be a positive finite number'),
    ('clip_bound', math.inf, 'clip_bound must be a positive finite number'),
    ('selection_epsilon', 0.0, 'selection_epsilon must be a positive finite'),
    ('selection_epsilon', -0.1, 'selection_epsilon must be a positive finite'),
    ('release_epsilon', 0.0, 'release_epsilon must be a positive finite'),
    ('release_epsilon', None, 'release_epsilon must be a positive finite'),
    ('threshold', -1e-9, 'threshold must be a non-negative finite number'),
    ('threshold', math.nan, 'threshold must be a non-negative finite number'),
    ('threshold', True, 'threshold must be a non-negative finite number'),
    ('normalize_by_steps', 1, 'normalize_by_steps must be a bool. Found 1.'),
  ],
)
def test_svt_rejects(field, value, message):
  with pytest.raises(ValueError, match=message):
    mechanisms.SparseVectorTechnique(**{**_SVT, field: value})


@pytest.mark.parametrize(
  'kwargs,message',
  [
    (dict(shared_fraction=0, clip_bound=1.0), 'shared_fraction must be in'),
    (dict(shared_fraction=-0.2, clip_bound=1.0), 'shared_fraction must be in'),
    (dict(shared_fraction=0.2, clip_bound=0), 'clip_bound must be a positive'),
    (
      dict(shared_fraction=0.2, clip_bound=1.0, normalize_by_steps='yes'),
      'normalize_by_steps must be a bool',
    ),
  ],
)
def test_selective_sharing_rejects(kwargs, message):
  with pytest.raises(ValueError, match=message):
    mechanisms.SelectiveSharing(**kwargs)


@pytest.mark.parametrize(
  'config',
  [
    mechanisms.NoPrivacy(),
    mechanisms.SelectiveSharing(0.25, 0.01, normalize_by_steps=False),
    mechanisms.SparseVectorTechnique(**_SVT),
  ],
)
def test_json_round_trip(config):
  text = config.to_json()
  assert json.loads(text)['name'] == config.name
  assert type(config).from_json(text) == config
  assert mechanisms.from_json(text) == config


def test_from_json_rejects():
  svt = mechanisms.SparseVectorTechnique(**_SVT).to_json()
  with pytest.raises(ValueError, match="name must be 'selective_sharing'"):
    mechanisms.SelectiveSharing.from_json(svt)
  with pytest.raises(ValueError, match="no field 'noise'"):
    mechanisms.SparseVectorTechnique.from_json(
      json.dumps({**json.loads(svt), 'noise': 1})
    )
  with pytest.raises(ValueError, match='release_epsilon must be given'):
    mechanisms.SparseVectorTechnique.from_json(
      json.dumps(
        {k: v for k, v in json.loads(svt).items() if k != 'release_epsilon'}
      )
    )
  with pytest.raises(ValueError, match='threshold must be a non-negative'):
    mechanisms.from_json(json.dumps({**json.loads(svt), 'threshold': -1}))
  with pytest.raises(ValueError, match='name must be one of none, '):
    mechanisms.from_json('{"name": "gaussian"}')
  with pytest.raises(ValueError, match='text must be a JSON object'):
    mechanisms.from_json('[1, 2]')
  with pytest.raises(ValueError, match='text must be a JSON object'):
    mechanisms.from_json('not json')


@pytest.mark.parametrize(
  'fraction,size,count',
  [
    (0.1, 30, 3),  # 0.1·30 is 3.0000000000000004 in binary floating point
    (0.07, 100, 7),  # 7.000000000000001 in binary
    (0.3, 10, 3),
    (0.5, 3, 2),
    (0.3333, 3, 1),
    (1e-9, 10, 1),  # at least one value
    (1.0, 7, 7),
    (0.9, 4_702_227, 4_232_005),
    (0.1, 4_702_227, 470_223),
  ],
)
def test_shared_count_by_hand(fraction, size, count):
  assert mechanisms.shared_count(fraction, size) == count
  assert mechanisms.SelectiveSharing(fraction, 1.0).shared_count(size) == count


def test_shared_count_rejects():
  with pytest.raises(ValueError, match='num_values must be a positive integer'):
    mechanisms.shared_count(0.5, 0)
  with pytest.raises(ValueError, match=r'shared_fraction must be in \(0, 1\]'):
    mechanisms.shared_count(0.0, 3)


def test_noise_scales_of_svt():
  scales = mechanisms.SparseVectorTechnique(**_SVT).noise_scales(8)
  # c = 4: ε1 = 1 / (1 + 8^(2/3)) = 1/5.
  assert scales.threshold_epsilon == pytest.approx(0.2)
  assert scales.query == pytest.approx(2 * 4 * 1.0 / 0.8)
  assert scales.release == pytest.approx(2 * 4 * 1.0 / 0.5)


# ------------------------------------------------- privatize: exact cases ----


def test_no_privacy_returns_the_update():
  update = _update()
  private, report = mechanisms.privatize(update, 3, mechanisms.NoPrivacy())
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
    mechanisms.SparseVectorTechnique(**_SVT),
  ],
)
def test_report_has_the_same_keys_and_dtypes_for_every_mechanism(mechanism):
  _, report = mechanisms.privatize(_update(), 2, mechanism, seed=[1, 2])
  assert tuple(report) == mechanisms.REPORT_KEYS
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
  private, report = mechanisms.privatize(update, 5, config)
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
  private, report = mechanisms.privatize(update, 2, config)
  np.testing.assert_array_equal(
    _flat(private), np.float32([0.5, -2.0, 0.1, 2.0, -0.05, 0.0, 1.0, -0.7])
  )
  assert float(report['clipped_fraction']) == 1 / 8


def test_selective_sharing_keeps_the_c_largest():
  # q = 0.3 of 8: c = ⌈2.4⌉ = 3. Clipped at 1: |w| = .5 1 .1 1 .05 0 1 .7;
  # the three 1s (indices 1, 3, 6) are kept, as their clipped values.
  config = mechanisms.SelectiveSharing(0.3, 1.0, normalize_by_steps=False)
  private, report = mechanisms.privatize(_update(), 1, config)
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
  private, report = mechanisms.privatize(update, 1, config)
  np.testing.assert_array_equal(_flat(private), np.float32([0, 1, -1, 0.5]))
  assert float(report['clipped_fraction']) == 0.5


def test_svt_report_by_hand():
  config = mechanisms.SparseVectorTechnique(**_SVT)
  private, report = mechanisms.privatize(_update(), 2, config, seed=[4, 5])
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
  config = mechanisms.SparseVectorTechnique(
    1.0, 1.0, 1e5, 1e9, 0.01, normalize_by_steps=True
  )
  update = [tf.constant([0.5, -2.0, 0.1, 3.0])]
  private, report = mechanisms.privatize(update, 2, config, seed=[1, 1])
  np.testing.assert_allclose(_flat(private), [0.5, -2.0, 0.1, 2.0], atol=1e-4)
  assert int(report['released']) == 4


# ------------------------------------------------------------ randomness ----


def test_explicit_seeds_reproduce_and_differ():
  config = mechanisms.SparseVectorTechnique(**_SVT)
  a = mechanisms.privatize(_update(), 2, config, seed=[7, 8])
  b = mechanisms.privatize(_update(), 2, config, seed=tf.constant([7, 8]))
  c = mechanisms.privatize(_update(), 2, config, seed=[7, 9])
  np.testing.assert_array_equal(_flat(a[0]), _flat(b[0]))
  assert float(a[1]['noisy_threshold']) == float(b[1]['noisy_threshold'])
  assert float(a[1]['noisy_threshold']) != float(c[1]['noisy_threshold'])


def test_no_seed_gives_fresh_noise_on_every_call():
  config = mechanisms.SparseVectorTechnique(**_SVT)
  thresholds = {
    float(mechanisms.privatize(_update(), 2, config)[1]['noisy_threshold'])
    for _ in range(3)
  }
  assert len(thresholds) == 3

  @tf.function
  def privatize(update):
    return mechanisms.privatize(update, 2, config)

  first = privatize(_update())[1]['noisy_threshold']
  second = privatize(_update())[1]['noisy_threshold']
  assert float(first) != float(second)


def test_fresh_noise_survives_a_global_seed():
  # Trainers call tf.keras.utils.set_random_seed; two separately traced
  # functions must still draw different noise.
  config = mechanisms.SparseVectorTechnique(**_SVT)
  try:
    tf.random.set_seed(1)
    draws = [
      float(
        tf.function(lambda u: mechanisms.privatize(u, 2, config))(_update())[1][
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
  config = mechanisms.SparseVectorTechnique(**_SVT)
  graph = tf.Graph()
  with graph.as_default():
    steps = tf.compat.v1.placeholder(tf.float32, [])
    private, report = mechanisms.privatize(_update(), steps, config)
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
    mechanisms.privatize(
      _update(), steps, mechanisms.SelectiveSharing(0.5, 1.0)
    )


def test_privatize_rejects_non_scalar_steps():
  with pytest.raises(ValueError, match='local_steps must be a real scalar'):
    mechanisms.privatize(
      _update(), tf.constant([1.0, 2.0]), mechanisms.SelectiveSharing(0.5, 1.0)
    )


def test_privatize_checks_tensor_steps_when_it_runs():
  with pytest.raises(tf.errors.InvalidArgumentError, match='local_steps'):
    mechanisms.privatize(
      _update(), tf.constant(-3), mechanisms.SparseVectorTechnique(**_SVT)
    )


def test_steps_are_not_checked_without_normalisation():
  config = mechanisms.SelectiveSharing(0.5, 1.0, normalize_by_steps=False)
  mechanisms.privatize(_update(), 0, config)


def test_privatize_rejects_bad_mechanisms_seeds_and_updates():
  with pytest.raises(TypeError, match='mechanism must be one of NoPrivacy'):
    mechanisms.privatize(_update(), 1, 'svt')
  with pytest.raises(ValueError, match='seed must be an int64 tensor'):
    mechanisms.privatize(
      _update(), 1, mechanisms.SparseVectorTechnique(**_SVT), seed=5
    )
  with pytest.raises(ValueError, match='update must hold at least one value'):
    mechanisms.privatize([], 1, mechanisms.SelectiveSharing(0.5, 1.0))
  with pytest.raises(ValueError, match='floating-point tensors'):
    mechanisms.privatize(
      [tf.constant([1, 2])], 1, mechanisms.SelectiveSharing(0.5, 1.0)
    )
