"""Tests for tff_brats.inference.options."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from tff_brats.inference import options as options_lib
from tff_brats.inference import sliding_window
from tff_brats.models import training_metadata

InferenceOptions = options_lib.InferenceOptions
RECORD = training_metadata.TrainingMetadata(
  crop_size=(48, 48, 32), crop_margin=2
)


def _warnings(caplog):
  return [
    r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
  ]


def test_defaults():
  options = InferenceOptions()
  assert options.window is None and options.crop_margin is None
  assert options.overlap == sliding_window.DEFAULT_OVERLAP == 0.5
  assert options.blending == 'gaussian'
  assert options.sigma_scale == sliding_window.DEFAULT_SIGMA_SCALE == 0.125
  assert options.threshold == sliding_window.DEFAULT_THRESHOLD == 0.5
  assert options.batch_size == 1
  assert options.output_layout is None
  assert not options.resolved
  assert [f.name for f in dataclasses.fields(InferenceOptions) if f.init] == [
    'window',
    'overlap',
    'blending',
    'sigma_scale',
    'threshold',
    'batch_size',
    'output_layout',
    'crop_margin',
  ]


def test_values_are_normalised():
  options = InferenceOptions(window=16, sigma_scale=[0.1, 0.2, 0.3])
  assert options.window == (16, 16, 16)
  assert options.sigma_scale == (0.1, 0.2, 0.3)
  assert InferenceOptions(window=[8, 16, 24]).window == (8, 16, 24)
  assert hash(options) == hash(
    InferenceOptions(window=(16, 16, 16), sigma_scale=(0.1, 0.2, 0.3))
  )


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'window': 0}, r'window must be 3 positive integers .* Found \(0, 0, 0\)'),
    ({'window': (8, 8)}, r'window must be 3 positive integers .*\(8, 8\)'),
    ({'overlap': 1}, r'overlap must be in \[0, 1\). Found 1.'),
    ({'overlap': -0.1}, r'overlap must be in \[0, 1\). Found -0.1.'),
    (
      {'blending': 'median'},
      "blending must be one of gaussian, constant. Found 'median'.",
    ),
    ({'sigma_scale': 0}, 'sigma_scale must be one positive number or 3'),
    ({'threshold': 0.0}, r'threshold must be in \(0, 1\). Found 0.0.'),
    ({'threshold': 1.0}, r'threshold must be in \(0, 1\). Found 1.0.'),
    ({'batch_size': 0}, 'batch_size must be a positive integer. Found 0.'),
    (
      {'batch_size': True},
      'batch_size must be a positive integer. Found True.',
    ),
    (
      {'output_layout': 'brats2019'},
      "output_layout must be one of brats2018, brats2023. Found 'brats2019'.",
    ),
    (
      {'crop_margin': -1},
      'crop_margin must be a non-negative integer. Found -1.',
    ),
  ],
)
def test_validation_messages_name_the_field_and_value(kwargs, message):
  with pytest.raises(ValueError, match=message):
    InferenceOptions(**kwargs)


def test_unset_window_and_margin_come_from_the_record(caplog):
  resolved = InferenceOptions(overlap=0.25).resolve(RECORD, size_multiple=8)
  assert resolved.window == (48, 48, 32)
  assert resolved.crop_margin == 2
  assert resolved.overlap == 0.25
  assert resolved.resolved
  assert _warnings(caplog) == []


def test_explicit_values_that_differ_are_used_with_a_warning(caplog):
  resolved = InferenceOptions(window=64, crop_margin=0).resolve(RECORD)
  assert resolved.window == (64, 64, 64)
  assert resolved.crop_margin == 0
  window_warning, margin_warning = _warnings(caplog)
  assert window_warning.startswith(
    "window (64, 64, 64) differs from the model's training crop, "
    '(48, 48, 32); using (64, 64, 64).'
  )
  assert margin_warning.startswith(
    "crop_margin 0 differs from the crop_margin of the model's training "
    'data, 2; using 0.'
  )


def test_explicit_values_that_match_do_not_warn(caplog):
  resolved = InferenceOptions(window=(48, 48, 32), crop_margin=2).resolve(
    RECORD
  )
  assert (resolved.window, resolved.crop_margin) == ((48, 48, 32), 2)
  assert _warnings(caplog) == []


def test_no_record_keeps_the_default_and_warns(caplog):
  resolved = InferenceOptions().resolve(None)
  assert resolved.window == options_lib.DEFAULT_WINDOW == (128, 128, 128)
  assert resolved.crop_margin == options_lib.DEFAULT_CROP_MARGIN == 0
  (warning,) = _warnings(caplog)
  assert warning.startswith(
    'The model records no training crop; using the default window '
    '(128, 128, 128).'
  )
  caplog.clear()
  other = InferenceOptions().resolve(None, default_window=(64, 64, 64))
  assert other.window == (64, 64, 64)
  assert '(64, 64, 64)' in _warnings(caplog)[0]
  # An explicit window with no record: nothing to compare, no warning.
  caplog.clear()
  assert InferenceOptions(window=16).resolve(None).window == (16, 16, 16)
  assert _warnings(caplog) == []


def test_record_without_margin_uses_the_default_margin(caplog):
  record = training_metadata.TrainingMetadata((16, 16, 16))
  resolved = InferenceOptions(crop_margin=3).resolve(record)
  assert resolved.crop_margin == 3  # nothing recorded to differ from
  assert InferenceOptions().resolve(record).crop_margin == 0
  assert _warnings(caplog) == []


def test_resolved_options_are_not_resolved_again(caplog):
  resolved = InferenceOptions(window=64).resolve(RECORD)
  assert len(_warnings(caplog)) == 1
  again = resolved.resolve(RECORD)
  assert again is resolved
  assert len(_warnings(caplog)) == 1  # one warning per run, not per case
  # A copy with other values is a new, unresolved request.
  changed = dataclasses.replace(resolved, threshold=0.4)
  assert not changed.resolved


def test_window_must_fit_the_model():
  with pytest.raises(
    ValueError,
    match=r'window must be a multiple of 8 along every axis for this model. '
    r'Found \(12, 12, 12\).',
  ):
    InferenceOptions(window=12).resolve(None, size_multiple=8)
  resolved = InferenceOptions(window=12).resolve(None, size_multiple=4)
  with pytest.raises(ValueError, match='window must be a multiple of 8'):
    resolved.resolve(None, size_multiple=8)
  with pytest.raises(ValueError, match='size_multiple must be a positive'):
    InferenceOptions().resolve(None, size_multiple=0)


def test_sliding_window_kwargs_need_a_window():
  with pytest.raises(ValueError, match='window must be set'):
    InferenceOptions().sliding_window_kwargs()
  options = InferenceOptions(window=8, overlap=0.25, batch_size=2)
  assert options.sliding_window_kwargs() == {
    'window': (8, 8, 8),
    'overlap': 0.25,
    'blending': 'gaussian',
    'sigma_scale': 0.125,
    'batch_size': 2,
  }


def test_to_json():
  options = InferenceOptions(window=8, sigma_scale=(0.1, 0.1, 0.2))
  assert options.to_json() == {
    'window': [8, 8, 8],
    'overlap': 0.5,
    'blending': 'gaussian',
    'sigma_scale': [0.1, 0.1, 0.2],
    'threshold': 0.5,
    'batch_size': 1,
    'output_layout': None,
    'crop_margin': None,
  }


def test_resolve_for_reads_the_predictor(caplog):
  class FakePredictor:
    size_multiple = 32
    training = RECORD

  with pytest.raises(ValueError, match=r'multiple of 32 .*\(48, 48, 32\)'):
    options_lib.resolve_for(None, FakePredictor())
  FakePredictor.size_multiple = 8
  resolved = options_lib.resolve_for(None, FakePredictor())
  assert resolved.window == (48, 48, 32)

  # A plain function records nothing: the given default, with a warning.
  def function(batch):
    return batch

  resolved = options_lib.resolve_for(
    None, function, default_window=(32, 32, 32)
  )
  assert resolved.window == (32, 32, 32)
  assert 'records no training crop' in _warnings(caplog)[-1]
  with pytest.raises(ValueError, match='options must be an InferenceOptions'):
    options_lib.resolve_for({'window': 8}, function)
