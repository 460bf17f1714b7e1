"""Tests for tff_brats.models.training_metadata."""

import json

import pytest

from tff_brats.data import manifest as manifest_lib
from tff_brats.models import training_metadata

TrainingMetadata = training_metadata.TrainingMetadata


def _manifest(request):
  return manifest_lib.Manifest(
    root='/prepared',
    clients={},
    client_shards={},
    validation=(),
    validation_shards=(),
    cases={},
    request=request,
  )


def test_fields_are_normalised():
  record = TrainingMetadata(crop_size=[48, 48, 32], crop_margin=2)
  assert record.crop_size == (48, 48, 32)
  assert record.crop_margin == 2
  assert TrainingMetadata((8, 8, 8)).crop_margin is None


def test_for_prepared_reads_the_crop_margin_of_the_request():
  prepared = _manifest({'crop_margin': 3, 'seed': 0})
  record = TrainingMetadata.for_prepared(prepared, (16, 16, 16))
  assert record == TrainingMetadata((16, 16, 16), 3)
  # A prepared folder that does not record its margin: unknown, not 0.
  unknown = TrainingMetadata.for_prepared(_manifest({}), (16, 16, 16))
  assert unknown.crop_margin is None


def test_json_round_trip():
  record = TrainingMetadata((48, 40, 32), 1)
  assert record.to_json() == {'crop_size': [48, 40, 32], 'crop_margin': 1}
  text = json.dumps(record.to_json())
  assert TrainingMetadata.from_json(json.loads(text), where='f') == record
  assert TrainingMetadata.from_json(
    {'crop_size': [8, 8, 8], 'crop_margin': None, 'newer_field': 1}, where='f'
  ) == TrainingMetadata((8, 8, 8))


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (
      {'crop_size': (8, 8)},
      r'crop_size must be 3 positive integers \(d, h, w\). Found \(8, 8\).',
    ),
    ({'crop_size': (8, 0, 8)}, r'Found \(8, 0, 8\)'),
    ({'crop_size': '888'}, "Found '888'"),
    (
      {'crop_size': (8, 8, 8), 'crop_margin': -1},
      'crop_margin must be a non-negative integer. Found -1.',
    ),
    (
      {'crop_size': (8, 8, 8), 'crop_margin': 1.5},
      'crop_margin must be a non-negative integer. Found 1.5.',
    ),
  ],
)
def test_bad_fields(kwargs, message):
  with pytest.raises(ValueError, match=message):
    TrainingMetadata(**kwargs)


@pytest.mark.parametrize(
  'value, message',
  [
    ([8, 8, 8], r'/m/config.json: field "training" must be an object'),
    ({'crop_margin': 0}, r'must be an object with "crop_size". Found'),
    (
      {'crop_size': [8, 8]},
      r'/m/config.json: field "training" is invalid: crop_size must be 3',
    ),
  ],
)
def test_from_json_names_the_file_and_field(value, message):
  with pytest.raises(ValueError, match=message):
    TrainingMetadata.from_json(value, where='/m/config.json')
