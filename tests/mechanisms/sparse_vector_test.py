"""Tests for tff_brats.mechanisms.sparse_vector (the SVT mechanism object)."""

import dataclasses
import math

import pytest

from tff_brats import mechanisms
from tff_brats.aggregators import private_sharing
from tff_brats.privacy import accounting
from tff_brats.privacy import events
from tff_brats.privacy import planning

_SVT = dict(
  shared_fraction=0.5,
  clip_bound=1.0,
  selection_epsilon=1.0,
  release_epsilon=0.5,
  threshold=0.2,
)


def test_name_guarantee_and_record():
  svt = mechanisms.SparseVector(**_SVT)
  assert svt.name == 'sparse_vector'
  assert svt.dp_event() == events.EpsilonDeltaDpEvent(1.5, 0.0)
  assert svt.epsilon_per_round == 1.5
  assert svt.has_guarantee
  assert svt.record() == accounting.PrivacyRecord(
    'sparse_vector', events.EpsilonDeltaDpEvent(1.5)
  )
  assert svt.guarantee_text() == '(ε = 1.5, δ = 0) per round'
  # Exact lattice noise: the step count is the only caveat (no
  # floating-point one, unlike gaussian's).
  (step_count,) = svt.caveats
  assert 'step count n' in step_count and 'sent in the clear' in step_count


def test_numbers_are_stored_as_floats_and_frozen():
  svt = mechanisms.SparseVector(1, 2, 3, 4, 0)
  assert svt == mechanisms.SparseVector(1.0, 2.0, 3.0, 4.0, 0.0)
  assert all(
    isinstance(getattr(svt, f), float)
    for f in ('shared_fraction', 'clip_bound', 'threshold')
  )
  with pytest.raises(dataclasses.FrozenInstanceError):
    svt.clip_bound = 2.0


@pytest.mark.parametrize(
  'field,value,message',
  [
    (
      'shared_fraction',
      0.0,
      r'^shared_fraction must be in \(0, 1\]. Found 0.0.$',
    ),
    (
      'shared_fraction',
      1.5,
      r'^shared_fraction must be in \(0, 1\]. Found 1.5.$',
    ),
    ('shared_fraction', float('nan'), 'shared_fraction must be in'),
    ('shared_fraction', '0.5', "Found '0.5'."),
    ('clip_bound', 0.0, '^clip_bound must be a positive number. Found 0.0.$'),
    ('clip_bound', -1.0, 'clip_bound must be a positive number'),
    ('clip_bound', math.inf, 'clip_bound must be a positive number'),
    ('selection_epsilon', 0.0, 'selection_epsilon must be a positive number'),
    ('selection_epsilon', -0.1, 'selection_epsilon must be a positive number'),
    ('release_epsilon', 0.0, 'release_epsilon must be a positive number'),
    (
      'release_epsilon',
      None,
      '^release_epsilon must be given for sparse_vector. Found None.$',
    ),
    ('threshold', -1e-9, 'threshold must be a non-negative number'),
    ('threshold', math.nan, 'threshold must be a non-negative number'),
    ('threshold', True, 'threshold must be a non-negative number'),
    ('normalize_by_steps', 1, '^normalize_by_steps must be a bool. Found 1.$'),
  ],
)
def test_rejects(field, value, message):
  with pytest.raises(ValueError, match=message):
    mechanisms.SparseVector(**{**_SVT, field: value})


def test_internals_come_from_the_budget():
  svt = mechanisms.SparseVector(**_SVT)
  # c = 4 of N = 8: ε1 = 1 / (1 + 8^(2/3)) = 1/5 (budget_test.py).
  internals = svt.describe(8)
  assert internals['shared_count'] == 4
  assert internals['threshold_epsilon'] == pytest.approx(0.2)
  assert internals['query_scale'] == pytest.approx(2 * 4 * 1.0 / 0.8)
  assert internals['release_scale'] == pytest.approx(2 * 4 * 1.0 / 0.5)
  assert svt.describe(None) == {}
  text = '\n'.join(svt.describe_lines(4_702_227))
  assert 'c = ⌈qN⌉ = 2,351,114 released at most' in text
  assert '(ε = 1.5, δ = 0)-DP: selection ε = 1 + release ε3 = 0.5' in text


def test_solve_release_and_selection_epsilon():
  # README: ε = 0.05 and a budget of 10 over 100 rounds give ε3 = 0.15409.
  solved = mechanisms.SparseVector.solve(
    'release_epsilon',
    target_epsilon=10.0,
    delta=1e-5,
    num_rounds=100,
    selection_epsilon=0.05,
  )
  assert solved.parameter == 'release_epsilon'
  assert solved.method == 'pld'
  assert solved.value == pytest.approx(0.15409, abs=5e-6)
  assert solved.mechanism.release_epsilon == solved.value
  spent = planning.total_epsilon(solved.mechanism.record(), 100, delta=1e-5)
  assert spent == pytest.approx(10.0, rel=1e-8)
  assert not accounting.exceeds(spent, 10.0)
  back = mechanisms.SparseVector.solve(
    'selection_epsilon',
    target_epsilon=10.0,
    delta=1e-5,
    num_rounds=100,
    release_epsilon=solved.value,
  )
  assert back.value == pytest.approx(0.05, rel=1e-8)


def test_solve_rejects():
  with pytest.raises(
    ValueError,
    match=r'solve_for must be one of the parameters sparse_vector can solve '
    r"for \(release_epsilon, selection_epsilon\). Found 'noise_multiplier'.",
  ):
    mechanisms.SparseVector.solve(
      'noise_multiplier', target_epsilon=1.0, delta=1e-5, num_rounds=1
    )
  with pytest.raises(
    ValueError, match='selection_epsilon must be given to solve for release'
  ):
    mechanisms.SparseVector.solve(
      'release_epsilon', target_epsilon=1.0, delta=1e-5, num_rounds=1
    )


def test_aggregation_factories():
  svt = mechanisms.SparseVector(**_SVT)
  weighted = svt.aggregation_factory(noise_seed=3, diagnostics=True)
  assert isinstance(weighted, private_sharing.PrivateSharingFactory)
  assert weighted.mechanism is svt
  unweighted = svt.aggregation_factory(weighted=False)
  assert isinstance(unweighted, private_sharing.UnweightedPrivateSharingFactory)
  # No step count is sent without weights, so nothing is normalised.
  assert unweighted.mechanism == dataclasses.replace(
    svt, normalize_by_steps=False
  )
