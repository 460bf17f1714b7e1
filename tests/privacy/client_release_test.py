"""Tests for tff_brats.privacy.client_release (the steps every client-side
mechanism shares), with a hand-written release; the mechanisms' own
releases are tested in tests/mechanisms/client_side_test.py."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.privacy import client_release


def _update():
  """Two tensors, 8 values: [[0.5, -2, 0.1], [3, -0.05, 0]] and [1, -0.7]."""
  return [
    tf.constant([[0.5, -2.0, 0.1], [3.0, -0.05, 0.0]]),
    tf.constant([1.0, -0.7]),
  ]


def _flat(nest):
  return np.concatenate([np.ravel(t.numpy()) for t in tf.nest.flatten(nest)])


class _Recorder:
  """A release that keeps the first c values and records its arguments."""

  def __call__(self, flat, steps, bound, count):
    self.flat = flat.numpy()
    self.steps = None if steps is None else float(steps)
    self.bound = float(bound)
    self.count = count
    kept = tf.concat([flat[:count], tf.zeros_like(flat[count:])], axis=0)
    stats = {
      'released': tf.constant(count, tf.int32),
      'noisy_threshold': tf.constant(0.25, tf.float32),
      'passed': tf.constant(7, tf.int32),
    }
    return kept, stats


def test_privatize_hands_the_flat_update_bound_and_count_to_the_release():
  release = _Recorder()
  private, report = client_release.privatize(
    _update(),
    2,
    release,
    shared_fraction=0.3,
    clip_bound=1.0,
    normalize_by_steps=True,
    epsilon=1.5,
  )
  np.testing.assert_array_equal(release.flat, _flat(_update()))
  # n = 2, γ = 1: the bound on ΔW is n·γ = 2; c = ⌈0.3 · 8⌉ = 3.
  assert (release.steps, release.bound, release.count) == (2.0, 2.0, 3)
  np.testing.assert_array_equal(
    _flat(private), np.float32([0.5, -2.0, 0.1, 0, 0, 0, 0, 0])
  )
  assert private[0].shape == [2, 3] and private[1].shape == [2]
  assert {k: float(v) for k, v in report.items()} == {
    'released': 3,
    # |ΔW| > 2: only 3.0.
    'clipped_fraction': 1 / 8,
    'noisy_threshold': 0.25,
    'epsilon': 1.5,
    'num_values': 8,
    'shared_count': 3,
    'passed': 7,
  }
  assert tuple(report) == client_release.REPORT_KEYS


def test_privatize_without_normalisation_passes_gamma_and_no_steps():
  release = _Recorder()
  _, report = client_release.privatize(
    _update(),
    0,  # not checked without normalisation
    release,
    shared_fraction=1.0,
    clip_bound=1.0,
    normalize_by_steps=False,
    epsilon=math.inf,
  )
  assert (release.steps, release.bound, release.count) == (None, 1.0, 8)
  # |-2| and |3| exceed γ = 1: 2 of 8.
  assert float(report['clipped_fraction']) == 0.25
  assert float(report['epsilon']) == math.inf


def test_unchanged_returns_the_update_and_a_report():
  update = _update()
  private, report = client_release.unchanged(update)
  np.testing.assert_array_equal(_flat(private), _flat(update))
  assert tuple(report) == client_release.REPORT_KEYS
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
  'kwargs, message',
  [
    (
      dict(clip_bound=0.0),
      '^clip_bound must be a positive number. Found 0.0.$',
    ),
    (dict(shared_fraction=0.0), r'^shared_fraction must be in \(0, 1\]'),
    (
      dict(normalize_by_steps=1),
      '^normalize_by_steps must be a bool. Found 1.$',
    ),
  ],
)
def test_privatize_rejects_bad_parameters(kwargs, message):
  arguments = dict(
    shared_fraction=0.5, clip_bound=1.0, normalize_by_steps=True, epsilon=1.0
  )
  with pytest.raises(ValueError, match=message):
    client_release.privatize(
      _update(), 1, _Recorder(), **{**arguments, **kwargs}
    )
