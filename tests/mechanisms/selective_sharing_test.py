"""Tests for tff_brats.mechanisms.selective_sharing and no_privacy."""

import dataclasses
import math

import dp_accounting
import pytest

from tff_brats import mechanisms
from tff_brats.aggregators import private_sharing


def test_selective_sharing_makes_no_claim():
  sharing = mechanisms.SelectiveSharing(0.1, 1.0)
  assert sharing.name == 'selective_sharing'
  assert sharing.dp_event() == dp_accounting.NonPrivateDpEvent()
  assert sharing.epsilon_per_round == math.inf
  assert not sharing.has_guarantee
  assert not sharing.record().has_guarantee
  assert sharing.guarantee_text() == 'no DP guarantee (ε = ∞)'
  assert sharing.caveats == ('selective_sharing makes no DP claim: ε = inf.',)
  assert sharing.shared_count(4_702_227) == 470_223
  assert sharing.describe(30) == {'shared_count': 3}
  assert 'c = ⌈qN⌉ = 3 of N = 30' in '\n'.join(sharing.describe_lines(30))


def test_no_privacy_makes_no_claim():
  none = mechanisms.NoPrivacy()
  assert none.name == 'none'
  assert none.dp_event() == dp_accounting.NonPrivateDpEvent()
  assert none.epsilon_per_round == math.inf
  assert not none.normalize_by_steps
  assert none.caveats == ('none makes no DP claim: ε = inf.',)
  assert isinstance(
    none.aggregation_factory(weighted=False),
    private_sharing.UnweightedPrivateSharingFactory,
  )


@pytest.mark.parametrize(
  'kwargs,message',
  [
    (dict(shared_fraction=0, clip_bound=1.0), 'shared_fraction must be in'),
    (dict(shared_fraction=-0.2, clip_bound=1.0), 'shared_fraction must be in'),
    (
      dict(shared_fraction=0.2, clip_bound=0),
      '^clip_bound must be a positive number. Found 0.$',
    ),
    (
      dict(shared_fraction=0.2, clip_bound=1.0, normalize_by_steps='yes'),
      "^normalize_by_steps must be a bool. Found 'yes'.$",
    ),
  ],
)
def test_selective_sharing_rejects(kwargs, message):
  with pytest.raises(ValueError, match=message):
    mechanisms.SelectiveSharing(**kwargs)


def test_selective_sharing_is_frozen_with_float_fields():
  sharing = mechanisms.SelectiveSharing(1, 2)
  assert (sharing.shared_fraction, sharing.clip_bound) == (1.0, 2.0)
  assert isinstance(sharing.clip_bound, float)
  with pytest.raises(dataclasses.FrozenInstanceError):
    sharing.clip_bound = 3.0
