"""Tests for tff_brats.privacy.events."""

import json
import math

import dp_accounting
import numpy as np
import pytest

from tff_brats.privacy import events

_EVENTS = [
  events.EpsilonDeltaDpEvent(2.0),
  events.EpsilonDeltaDpEvent(0.5, 1e-6),
  dp_accounting.GaussianDpEvent(0.7),
  dp_accounting.NonPrivateDpEvent(),
  dp_accounting.NoOpDpEvent(),
  dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(
      0.01, dp_accounting.GaussianDpEvent(1.0)
    ),
    5,
  ),
  dp_accounting.ComposedDpEvent(
    [dp_accounting.GaussianDpEvent(5.0), dp_accounting.LaplaceDpEvent(2.0)]
  ),
]


@pytest.mark.parametrize('event', _EVENTS, ids=lambda e: type(e).__name__)
def test_json_round_trip(event):
  data = json.loads(json.dumps(events.event_to_dict(event), allow_nan=False))
  assert events.event_from_dict(data) == event


def test_dict_form_names_classes_and_fields():
  assert events.event_to_dict(events.EpsilonDeltaDpEvent(2.0)) == {
    'class_name': 'EpsilonDeltaDpEvent',
    'epsilon': 2.0,
    'delta': 0.0,
  }
  assert events.event_to_dict(
    dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 3)
  ) == {
    'class_name': 'SelfComposedDpEvent',
    'event': {'class_name': 'GaussianDpEvent', 'noise_multiplier': 1.0},
    'count': 3,
  }


def test_numpy_numbers_become_python_numbers():
  event = events.canonical(dp_accounting.GaussianDpEvent(np.float32(0.5)))
  assert type(event.noise_multiplier) is float
  assert event == dp_accounting.GaussianDpEvent(0.5)


def test_infinity_is_written_as_a_string():
  data = events.event_to_dict(dp_accounting.GaussianDpEvent(math.inf))
  assert data['noise_multiplier'] == 'inf'
  assert events.event_from_dict(data).noise_multiplier == math.inf


def test_is_non_private():
  assert events.is_non_private(dp_accounting.NonPrivateDpEvent())
  assert not events.is_non_private(events.EpsilonDeltaDpEvent(1.0))


@pytest.mark.parametrize(
  'data, message',
  [
    ({'class_name': 'os'}, 'must name a dp_accounting DpEvent class'),
    ([1], 'must name a dp_accounting DpEvent class'),
    (
      {'class_name': 'GaussianDpEvent', 'sigma': 1.0},
      r"fields must be \['noise_multiplier'\] for GaussianDpEvent. Found "
      r"\['sigma'\].",
    ),
    (
      {'class_name': 'EpsilonDeltaDpEvent', 'epsilon': -1.0, 'delta': 0.0},
      'epsilon must be a finite non-negative number. Found -1.0.',
    ),
  ],
)
def test_bad_dicts_are_rejected(data, message):
  with pytest.raises(ValueError, match=message):
    events.event_from_dict(data)


def test_events_of_other_modules_are_not_written():
  class Stranger(dp_accounting.DpEvent):
    pass

  with pytest.raises(ValueError, match='dp_event must be a dp_accounting'):
    events.event_to_dict(Stranger())
  with pytest.raises(ValueError, match='dp_event must be a dp_accounting'):
    events.event_to_dict('gaussian')
