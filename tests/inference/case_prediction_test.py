"""Tests for tff_brats.inference.case_prediction on tiny NIfTI cases."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.inference import case_files
from tff_brats.data import layouts
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import pipeline
from tff_brats.data import prepare
from tff_brats.data import reader
from tff_brats.data import records
from tff_brats.data.errors import BratsDataError
from tff_brats.inference import case_prediction
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.inference import sliding_window
from tff_brats.models import training_metadata

B18 = layouts.BRATS2018
B23 = layouts.BRATS2023
ID18 = 'Brats18_CBICA_AAA_1'
ID23 = 'BraTS-GLI-00001-000'
OUTSIDE = np.ones(case_files.SHAPE, bool)
OUTSIDE[tuple(slice(a, b) for a, b in case_files.BOX)] = False
Options = options_lib.InferenceOptions


def _expected_labels(layout, shape=case_files.SHAPE):
  return layouts.regions_to_labels(case_files.marker_regions(shape), layout)


def _case(tmp_path, case_id=ID18, layout=B18, **kwargs):
  return reader.case_from_directory(
    case_files.write_case(tmp_path, case_id, layout, **kwargs),
    require_label=False,
  )


def _everywhere(batch):
  """A network that calls every voxel it sees enhancing tumour."""
  return np.ones((*batch.shape[:4], 3), np.float32)


# predict_case.


@pytest.mark.parametrize(
  'window, overlap, batch_size',
  [
    ((8, 8, 8), 0.5, 2),  # several overlapping windows over the 12x12x8 crop
    ((16, 16, 16), 0.5, 1),  # one window larger than the crop (padded)
    ((4, 6, 8), 0.25, 3),
  ],
)
def test_crop_is_undone_at_the_original_coordinates(
  tmp_path, window, overlap, batch_size
):
  case = _case(tmp_path)
  result = case_prediction.predict_case(
    case_files.marker_predictor(),
    case,
    Options(window=window, overlap=overlap, batch_size=batch_size),
  )
  assert result.case_id == ID18
  assert result.crop_box == case_files.BOX
  assert result.labels.dtype == np.uint8
  assert result.labels.shape == case_files.SHAPE
  np.testing.assert_array_equal(result.labels, _expected_labels(B18))
  assert set(np.unique(result.labels)) == {0, 1, 2, 4}


def test_the_network_runs_on_the_brain_box_only(tmp_path):
  # The labels are 4 exactly on the brain's bounding box and 0 elsewhere.
  case = _case(tmp_path)
  labels = case_prediction.predict_case(
    _everywhere, case, Options(window=8)
  ).labels
  assert np.all(labels[~OUTSIDE] == 4)
  assert np.all(labels[OUTSIDE] == 0)
  # crop_margin widens the box as prepare's crop_margin does.
  result = case_prediction.predict_case(
    _everywhere, case, Options(window=8, crop_margin=2)
  )
  assert result.crop_box == ((1, 17), (0, 16), (2, 14))
  assert int((result.labels == 4).sum()) == 16 * 16 * 12


def test_window_and_margin_default_to_the_predictors_record(tmp_path, caplog):
  case = _case(tmp_path)
  seen = []
  record = training_metadata.TrainingMetadata((8, 4, 8), crop_margin=2)
  predictor = case_files.marker_predictor(training=record, seen=seen)
  result = case_prediction.predict_case(predictor, case)
  # The 16x16x12 box (margin 2) in windows of the training crop.
  assert result.crop_box == ((1, 17), (0, 16), (2, 14))
  assert {shape[1:4] for shape in seen} == {(8, 4, 8)}
  np.testing.assert_array_equal(result.labels, _expected_labels(B18))
  # case_files' voxels are 1 × 1.5 × 2 mm, which is warned about; nothing
  # else is.
  assert not [
    r
    for r in caplog.records
    if r.levelno >= logging.WARNING and 'has voxels of' not in r.getMessage()
  ]


def test_an_explicit_window_that_differs_from_the_record_warns(
  tmp_path, caplog
):
  case = _case(tmp_path)
  seen = []
  record = training_metadata.TrainingMetadata((8, 8, 8), crop_margin=0)
  predictor = case_files.marker_predictor(training=record, seen=seen)
  case_prediction.predict_case(predictor, case, Options(window=16))
  assert {shape[1:4] for shape in seen} == {(16, 16, 16)}
  (warning,) = [
    r.getMessage()
    for r in caplog.records
    if 'has voxels of' not in r.getMessage()  # case_files' 1 × 1.5 × 2 mm
  ]
  assert '(16, 16, 16)' in warning and '(8, 8, 8)' in warning


def test_normalisation_is_the_training_one(tmp_path):
  case = _case(tmp_path)
  seen = []

  def record(batch):
    seen.append(batch.copy())
    return np.zeros((*batch.shape[:4], 3), np.float32)

  case_prediction.predict_case(record, case, Options(window=(12, 12, 8)))
  assert len(seen) == 1  # one window, exactly the crop
  crop = case_files.make_image()[tuple(slice(a, b) for a, b in case_files.BOX)]
  expected = pipeline.normalize_intensity(crop).numpy()
  np.testing.assert_array_equal(seen[0][0], expected)


def test_keras_model_output_shape_background_and_probabilities(tmp_path):
  case = _case(tmp_path)
  predictor = predictors.from_keras_model(case_files.tiny_keras_model())
  result = case_prediction.predict_case(
    predictor,
    case,
    Options(window=8, batch_size=2),
    return_probabilities=True,
  )
  assert result.labels.shape == case_files.SHAPE
  assert result.labels.dtype == np.uint8
  assert np.all(result.labels[OUTSIDE] == 0)
  assert set(np.unique(result.labels)) <= set(B18.labels)
  probabilities = result.probabilities
  assert probabilities.shape == (*case_files.SHAPE, 3)
  assert probabilities.dtype == np.float32
  assert np.all(probabilities[OUTSIDE] == 0)
  inside = probabilities[~OUTSIDE]
  assert np.all((inside > 0) & (inside < 1))
  np.testing.assert_array_equal(
    result.labels,
    sliding_window.probabilities_to_labels(probabilities, B18),
  )
  # The model's thresholds split the box: not a constant segmentation.
  assert len(np.unique(result.labels[~OUTSIDE])) > 1
  assert (
    case_prediction.predict_case(
      predictor, case, Options(window=8)
    ).probabilities
    is None
  )


@pytest.mark.parametrize(
  'layout, case_id, output_layout, enhancing',
  [
    (B18, ID18, None, 4),
    (B23, ID23, None, 3),
    (B18, ID18, 'brats2023', 3),
    (B23, ID23, 'brats2018', 4),
  ],
)
def test_labels_follow_the_case_or_output_layout(
  tmp_path, layout, case_id, output_layout, enhancing
):
  case = _case(tmp_path, case_id, layout)
  labels = case_prediction.predict_case(
    case_files.marker_predictor(),
    case,
    Options(window=8, output_layout=output_layout),
  ).labels
  target = layouts.get_layout(output_layout) if output_layout else layout
  np.testing.assert_array_equal(labels, _expected_labels(target))
  assert enhancing in labels


def test_threshold_is_applied(tmp_path):
  case = _case(tmp_path)

  def half(batch):
    return np.full((*batch.shape[:4], 3), 0.6, np.float32)

  at_half = case_prediction.predict_case(
    half, case, Options(window=8, threshold=0.5)
  ).labels
  at_07 = case_prediction.predict_case(
    half, case, Options(window=8, threshold=0.7)
  ).labels
  assert np.all(at_half[~OUTSIDE] == 4)
  assert np.all(at_07 == 0)


def test_a_segmentation_next_to_the_images_is_not_needed(tmp_path):
  # A corrupt seg file does not stop prediction: labels are not read.
  folder = case_files.write_case(tmp_path, ID18)
  with open(case_files.modality_path(folder, B18, 'seg'), 'wb') as f:
    f.write(b'not a nifti file')
  case = reader.case_from_directory(folder, require_label=False)
  assert case.label_path is not None
  labels = case_prediction.predict_case(
    case_files.marker_predictor(), case, Options(window=8)
  ).labels
  np.testing.assert_array_equal(labels, _expected_labels(B18))


def test_reader_checks_apply(tmp_path):
  image = case_files.make_image()
  image[10, 5, 6, 2] = np.nan
  folder = case_files.write_case(tmp_path, ID18)
  flair = case_files.modality_path(folder, B18, 'flair')
  case_files.write_nifti(flair, image[..., 3].astype(np.float32))
  t2 = case_files.modality_path(folder, B18, 't2')
  case_files.write_nifti(t2, image[..., 2])
  case = reader.case_from_directory(folder, require_label=False)
  with pytest.raises(BratsDataError, match='NaN') as info:
    case_prediction.predict_case(
      case_files.marker_predictor(), case, Options(window=8)
    )
  assert ID18 in str(info.value) and t2 in str(info.value)
  assert '(10, 5, 6)' in str(info.value)


def test_empty_case_is_a_data_error(tmp_path):
  case = _case(tmp_path, image=np.zeros((*case_files.SHAPE, 4), np.float32))
  with pytest.raises(BratsDataError, match='no brain voxel') as info:
    case_prediction.predict_case(
      case_files.marker_predictor(), case, Options(window=8)
    )
  assert ID18 in str(info.value)


def test_a_window_that_does_not_fit_fails_before_reading(tmp_path):
  # The other bad options cannot even be built (see options_test.py).
  case = _case(tmp_path)
  for path in case.image_paths:
    os.remove(path)  # reading would fail with another error
  with pytest.raises(
    ValueError, match=r'window must be a multiple of 8 .*Found \(12, 12, 12\)'
  ):
    case_prediction.predict_case(
      case_files.marker_predictor(size_multiple=8), case, Options(window=12)
    )
  with pytest.raises(ValueError, match='options must be an InferenceOptions'):
    case_prediction.predict_case(
      case_files.marker_predictor(), case, {'window': 8}
    )


# predict_prepared_case.


def _prepared(tmp_path, layout=B18, case_id=ID18):
  """A NIfTI case and its prepared record, as prepare_data writes them."""
  image = case_files.make_image()
  folder = case_files.write_case(tmp_path, case_id, layout, image=image)
  box = prepare.brain_bounding_box(image)
  crop = tuple(slice(a, b) for a, b in box)
  serialized = records.encode_case(
    case_id, image[crop], case_files.marker_regions()[crop]
  )
  record = manifest_lib.CaseRecord(
    case_id=case_id,
    layout=layout.name,
    grade=None,
    source_files={},
    checksums={},
    shape=case_files.SHAPE,
    spacing=(1.0, 1.5, 2.0),
    affine=tuple(tuple(row) for row in case_files.AFFINE.tolist()),
    crop_box=box,
    shard='validation-00000-of-00001.tfrecord',
  )
  return folder, serialized, record


def test_prepared_case_in_both_grids(tmp_path):
  folder, serialized, record = _prepared(tmp_path)
  result = case_prediction.predict_prepared_case(
    case_files.marker_predictor(), serialized, record, Options(window=8)
  )
  regions = case_files.marker_regions()
  crop = tuple(slice(a, b) for a, b in case_files.BOX)
  assert result.case_id == ID18
  assert result.crop_box == case_files.BOX
  assert result.shape == case_files.SHAPE
  assert result.cropped_probabilities.shape == (12, 12, 8, 3)
  np.testing.assert_array_equal(result.cropped_regions, regions[crop])
  np.testing.assert_array_equal(result.regions, regions)
  np.testing.assert_array_equal(result.labels, _expected_labels(B18))
  # The same prediction as from the NIfTI files.
  case = reader.case_from_directory(folder, require_label=False)
  from_files = case_prediction.predict_case(
    case_files.marker_predictor(),
    case,
    Options(window=8),
    return_probabilities=True,
  )
  np.testing.assert_array_equal(result.labels, from_files.labels)
  np.testing.assert_array_equal(
    result.cropped_probabilities, from_files.probabilities[crop]
  )


def test_prepared_case_windows_default_to_the_record(tmp_path):
  _, serialized, record = _prepared(tmp_path)
  seen = []
  predictor = case_files.marker_predictor(
    training=training_metadata.TrainingMetadata((4, 4, 4), 0), seen=seen
  )
  result = case_prediction.predict_prepared_case(predictor, serialized, record)
  assert {shape[1:4] for shape in seen} == {(4, 4, 4)}
  np.testing.assert_array_equal(result.labels, _expected_labels(B18))


def test_prepared_case_from_the_evaluation_dataset(tmp_path):
  _, serialized, record = _prepared(tmp_path)
  shard = str(tmp_path / 'validation-00000-of-00001.tfrecord')
  with tf.io.TFRecordWriter(shard) as writer:
    writer.write(serialized)
  (element,) = list(pipeline.make_evaluation_dataset([shard]))
  parsed = records.parse_case(tf.constant(serialized))
  predictor = predictors.from_keras_model(case_files.tiny_keras_model())
  options = Options(window=8)
  results = [
    case_prediction.predict_prepared_case(
      predictor, element, record, options, normalized=True
    ),
    case_prediction.predict_prepared_case(predictor, parsed, record, options),
    case_prediction.predict_prepared_case(
      predictor, tf.constant(serialized), record, options
    ),
  ]
  for other in results[1:]:
    np.testing.assert_allclose(
      other.cropped_probabilities,
      results[0].cropped_probabilities,
      atol=1e-6,
    )
    np.testing.assert_array_equal(other.labels, results[0].labels)
  assert results[0].labels.shape == case_files.SHAPE
  assert np.all(results[0].labels[OUTSIDE] == 0)
  assert not results[0].regions[OUTSIDE].any()


def test_prepared_case_must_match_its_record(tmp_path):
  _, serialized, record = _prepared(tmp_path)
  options = Options(window=8)
  other_id = manifest_lib.CaseRecord(
    **{**record.__dict__, 'case_id': 'Brats18_CBICA_ZZZ_1'}
  )
  with pytest.raises(ValueError, match="Found case 'Brats18_CBICA_AAA_1'"):
    case_prediction.predict_prepared_case(
      case_files.marker_predictor(), serialized, other_id, options
    )
  other_box = manifest_lib.CaseRecord(
    **{**record.__dict__, 'crop_box': ((0, 12), (0, 12), (0, 9))}
  )
  with pytest.raises(
    ValueError,
    match=r'cropped shape .*\(12, 12, 9, 4\). Found \(12, 12, 8, 4\)',
  ):
    case_prediction.predict_prepared_case(
      case_files.marker_predictor(), serialized, other_box, options
    )
  with pytest.raises(ValueError, match='normalized must be False'):
    case_prediction.predict_prepared_case(
      case_files.marker_predictor(),
      serialized,
      record,
      options,
      normalized=True,
    )


def test_paste_crop():
  cropped = np.arange(2 * 3 * 1).reshape(2, 3, 1) + 1
  full = case_prediction.paste_crop(
    cropped, ((1, 3), (0, 3), (2, 3)), (4, 3, 5)
  )
  assert full.shape == (4, 3, 5) and full.dtype == cropped.dtype
  np.testing.assert_array_equal(full[1:3, 0:3, 2:3], cropped)
  assert full.sum() == cropped.sum()
  with pytest.raises(ValueError, match='crop_box must be 3 .* inside shape'):
    case_prediction.paste_crop(cropped, ((1, 3), (0, 3), (2, 6)), (4, 3, 5))
  with pytest.raises(ValueError, match='cropped must have the crop box size'):
    case_prediction.paste_crop(cropped, ((0, 3), (0, 3), (2, 3)), (4, 3, 5))
