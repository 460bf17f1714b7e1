"""Tests for tff_brats.inference.predict on tiny NIfTI cases."""

from __future__ import annotations

import os
import pathlib

import nibabel as nib
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
from tff_brats.inference import export
from tff_brats.inference import predict
from tff_brats.inference import sliding_window

B18 = layouts.BRATS2018
B23 = layouts.BRATS2023
ID18 = 'Brats18_CBICA_AAA_1'
ID23 = 'BraTS-GLI-00001-000'
OUTSIDE = np.ones(case_files.SHAPE, bool)
OUTSIDE[tuple(slice(a, b) for a, b in case_files.BOX)] = False


def _expected_labels(layout, shape=case_files.SHAPE):
  return layouts.regions_to_labels(case_files.marker_regions(shape), layout)


def _case(tmp_path, case_id=ID18, layout=B18, **kwargs):
  return reader.case_from_directory(
    case_files.write_case(tmp_path, case_id, layout, **kwargs),
    require_label=False,
  )


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
  result = predict.predict_case(
    case_files.marker_predictor(),
    case,
    window=window,
    overlap=overlap,
    batch_size=batch_size,
  )
  assert result.case_id == ID18
  assert result.crop_box == case_files.BOX
  assert result.labels.dtype == np.uint8
  assert result.labels.shape == case_files.SHAPE
  np.testing.assert_array_equal(result.labels, _expected_labels(B18))
  assert set(np.unique(result.labels)) == {0, 1, 2, 4}


def test_the_network_runs_on_the_brain_box_only(tmp_path):
  # A network that calls every voxel it sees enhancing tumour: the labels
  # are 4 exactly on the brain's bounding box and 0 elsewhere.
  case = _case(tmp_path)

  def everywhere(batch):
    return np.ones((*batch.shape[:4], 3), np.float32)

  labels = predict.predict_case(everywhere, case, window=8).labels
  assert np.all(labels[~OUTSIDE] == 4)
  assert np.all(labels[OUTSIDE] == 0)
  # crop_margin widens the box as prepare's crop_margin does.
  result = predict.predict_case(everywhere, case, window=8, crop_margin=2)
  assert result.crop_box == ((1, 17), (0, 16), (2, 14))
  assert int((result.labels == 4).sum()) == 16 * 16 * 12


def test_normalisation_is_the_training_one(tmp_path):
  case = _case(tmp_path)
  seen = []

  def record(batch):
    seen.append(batch.copy())
    return np.zeros((*batch.shape[:4], 3), np.float32)

  predict.predict_case(record, case, window=(12, 12, 8))
  assert len(seen) == 1  # one window, exactly the crop
  crop = case_files.make_image()[tuple(slice(a, b) for a, b in case_files.BOX)]
  expected = pipeline.normalize_intensity(crop).numpy()
  np.testing.assert_array_equal(seen[0][0], expected)


def test_keras_model_output_shape_background_and_probabilities(tmp_path):
  case = _case(tmp_path)
  predictor = predict.from_keras_model(case_files.tiny_keras_model())
  result = predict.predict_case(
    predictor, case, window=8, batch_size=2, return_probabilities=True
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
  assert predict.predict_case(predictor, case, window=8).probabilities is None


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
  labels = predict.predict_case(
    case_files.marker_predictor(),
    case,
    window=8,
    output_layout=output_layout,
  ).labels
  target = layouts.get_layout(output_layout) if output_layout else layout
  np.testing.assert_array_equal(labels, _expected_labels(target))
  assert enhancing in labels


def test_threshold_is_applied(tmp_path):
  case = _case(tmp_path)

  def half(batch):
    return np.full((*batch.shape[:4], 3), 0.6, np.float32)

  at_half = predict.predict_case(half, case, window=8, threshold=0.5).labels
  at_07 = predict.predict_case(half, case, window=8, threshold=0.7).labels
  assert np.all(at_half[~OUTSIDE] == 4)
  assert np.all(at_07 == 0)


def test_a_segmentation_next_to_the_images_is_not_needed(tmp_path):
  # A corrupt seg file does not stop prediction: labels are not read.
  folder = case_files.write_case(tmp_path, ID18)
  with open(case_files.modality_path(folder, B18, 'seg'), 'wb') as f:
    f.write(b'not a nifti file')
  case = reader.case_from_directory(folder, require_label=False)
  assert case.label_path is not None
  labels = predict.predict_case(
    case_files.marker_predictor(), case, window=8
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
    predict.predict_case(case_files.marker_predictor(), case, window=8)
  assert ID18 in str(info.value) and t2 in str(info.value)
  assert '(10, 5, 6)' in str(info.value)


def test_empty_case_is_a_data_error(tmp_path):
  case = _case(tmp_path, image=np.zeros((*case_files.SHAPE, 4), np.float32))
  with pytest.raises(BratsDataError, match='no brain voxel') as info:
    predict.predict_case(case_files.marker_predictor(), case, window=8)
  assert ID18 in str(info.value)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'window': 12}, r'window must be a multiple of 8 .*Found \(12, 12, 12\)'),
    ({'window': 0}, 'window must be 3 positive integers'),
    ({'threshold': 0.0}, r'threshold must be in \(0, 1\). Found 0.0.'),
    ({'overlap': 1}, r'overlap must be in \[0, 1\)'),
    ({'output_layout': 'brats2019'}, "layout must be one of .*'brats2019'"),
    ({'crop_margin': -1}, 'crop_margin must be a non-negative integer'),
  ],
)
def test_bad_options_fail_before_reading(tmp_path, kwargs, message):
  case = _case(tmp_path)
  for path in case.image_paths:
    os.remove(path)  # reading would fail with another error
  arguments = {'window': 8, **kwargs}
  with pytest.raises(ValueError, match=message):
    predict.predict_case(
      case_files.marker_predictor(size_multiple=8), case, **arguments
    )


# Predictors.


def test_saved_model_predictor_matches_keras(tmp_path):
  model = case_files.tiny_keras_model(seed=3)
  path = export.export_saved_model(model, str(tmp_path / 'exported'))
  predictor = predict.load_predictor(path)
  assert predictor.source == 'saved_model' and predictor.path == path
  batch = np.random.default_rng(0).normal(size=(2, 8, 6, 4, 4))
  expected = model(batch.astype(np.float32), training=False).numpy()
  np.testing.assert_allclose(predictor(batch), expected, atol=1e-6)
  keras = predict.from_keras_model(model)
  np.testing.assert_allclose(keras(batch), expected, atol=1e-6)


def test_saved_model_predictor_reads_size_multiple(tmp_path):
  path = export.export_saved_model(
    case_files.tiny_keras_model(), str(tmp_path / 'exported'), size_multiple=4
  )
  predictor = predict.load_predictor(path)
  assert predictor.size_multiple == 4
  case = _case(tmp_path)
  with pytest.raises(ValueError, match='window must be a multiple of 4'):
    predict.predict_case(predictor, case, window=6)


def test_plain_keras_saved_model_with_other_names(tmp_path):
  # A SavedModel not written by export: one input, one output, other names.
  model = case_files.tiny_keras_model()
  path = str(tmp_path / 'keras_saved_model')
  tf.saved_model.save(model, path)
  predictor = predict.load_predictor(path)
  batch = np.random.default_rng(1).normal(size=(1, 4, 4, 4, 4))
  np.testing.assert_allclose(
    predictor(batch), model(batch.astype(np.float32)).numpy(), atol=1e-6
  )
  assert predictor.size_multiple == 1


def test_model_io_predictor(tmp_path):
  model_io = pytest.importorskip('tff_brats.models.model_io')
  model = case_files.tiny_segresnet()
  path = str(tmp_path / 'model')
  model_io.save_model(model, path)
  assert predict.MODEL_IO_CONFIG == model_io.CONFIG_FILE
  assert predict.model_kind(path) == 'model_io'
  predictor = predict.load_predictor(path)
  assert predictor.source == 'model_io' and predictor.path == path
  assert predictor.size_multiple == model.size_multiple == 4
  batch = np.random.default_rng(2).normal(size=(2, 8, 4, 12, 4))
  np.testing.assert_allclose(
    predictor(batch),
    model(batch.astype(np.float32), training=False).numpy(),
    atol=1e-6,
  )
  # A broken model_io folder is a ValueError naming it.
  with open(os.path.join(path, model_io.CONFIG_FILE), 'w') as f:
    f.write('{not json')
  with pytest.raises(ValueError, match='must be a loadable model_io folder'):
    predict.load_predictor(path)


def test_model_kind_by_files(tmp_path):
  (tmp_path / 'saved').mkdir()
  (tmp_path / 'saved' / 'saved_model.pb').write_bytes(b'')
  (tmp_path / 'io').mkdir()
  (tmp_path / 'io' / 'config.json').write_text('{}')
  assert predict.model_kind(str(tmp_path / 'saved')) == 'saved_model'
  assert predict.model_kind(str(tmp_path / 'io')) == 'model_io'


@pytest.mark.parametrize(
  'setup, found',
  [
    (lambda p: None, 'which does not exist'),
    (lambda p: p.write_text('x'), 'Found a file'),
    (
      lambda p: (p.mkdir(), (p / 'weights.h5').write_text('')),
      'holding weights.h5',
    ),
    (lambda p: p.mkdir(), 'holding nothing'),
  ],
)
def test_load_predictor_names_the_bad_path(tmp_path, setup, found):
  path = tmp_path / 'model'
  setup(path)
  with pytest.raises(ValueError, match=found) as info:
    predict.load_predictor(str(path))
  message = str(info.value)
  assert message.startswith('model must be an exported SavedModel folder')
  assert str(path) in message


def test_corrupt_saved_model_is_a_value_error(tmp_path):
  path = tmp_path / 'broken'
  path.mkdir()
  (path / 'saved_model.pb').write_bytes(b'\x00garbage')
  with pytest.raises(ValueError, match='must be a loadable SavedModel'):
    predict.load_predictor(str(path))


# write_segmentation.


def test_written_segmentation_keeps_the_reference_grid_and_header(tmp_path):
  folder = case_files.write_case(tmp_path, ID18)
  reference = case_files.modality_path(folder, B18, 't1')
  labels = _expected_labels(B18)
  out = str(tmp_path / 'out' / f'{ID18}.nii.gz')
  os.makedirs(os.path.dirname(out))
  assert predict.write_segmentation(labels, reference, out) == out
  written, source = nib.load(out), nib.load(reference)
  assert written.get_data_dtype() == np.uint8
  data = np.asanyarray(written.dataobj)
  assert data.dtype == np.uint8
  np.testing.assert_array_equal(data, labels)
  np.testing.assert_array_equal(written.affine, source.affine)
  np.testing.assert_array_equal(written.affine, case_files.AFFINE)
  assert int(written.header['qform_code']) == case_files.QFORM_CODE
  assert int(written.header['sform_code']) == case_files.SFORM_CODE
  np.testing.assert_allclose(written.get_qform(), source.get_qform())
  np.testing.assert_allclose(written.get_sform(), source.get_sform())
  assert written.header.get_zooms() == source.header.get_zooms()
  assert written.header.get_xyzt_units() == ('mm', 'unknown')
  assert written.header['descrip'] == source.header['descrip']
  assert os.listdir(os.path.dirname(out)) == [f'{ID18}.nii.gz']


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
  folder = case_files.write_case(tmp_path, ID18)
  reference = case_files.modality_path(folder, B18, 't1')
  out = str(tmp_path / 'seg.nii.gz')
  first = np.zeros(case_files.SHAPE, np.uint8)
  predict.write_segmentation(first, reference, out)
  before = pathlib.Path(out).read_bytes()
  second = _expected_labels(B18)
  with pytest.raises(FileExistsError, match='must not exist') as info:
    predict.write_segmentation(second, reference, out)
  assert out in str(info.value)
  assert pathlib.Path(out).read_bytes() == before
  predict.write_segmentation(second, reference, out, overwrite=True)
  np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), second)
  assert sorted(os.listdir(tmp_path)) == [ID18, 'seg.nii.gz']


def test_write_uncompressed_and_bad_arguments(tmp_path):
  folder = case_files.write_case(tmp_path, ID18)
  reference = case_files.modality_path(folder, B18, 't1')
  labels = _expected_labels(B18)
  out = str(tmp_path / 'seg.nii')
  predict.write_segmentation(labels, reference, out)
  with open(out, 'rb') as f:
    assert f.read(4) == (348).to_bytes(4, 'little')  # not gzipped
  with pytest.raises(ValueError, match="out_path must end in '.nii.gz'"):
    predict.write_segmentation(labels, reference, str(tmp_path / 'seg.png'))
  with pytest.raises(
    ValueError,
    match=r'labels must have the shape .*\(20, 18, 16\). Found \(20, 18\)',
  ):
    predict.write_segmentation(
      labels[..., 0], reference, str(tmp_path / 'a.nii')
    )
  with pytest.raises(ValueError, match='labels must be integers'):
    predict.write_segmentation(
      labels.astype(np.float32), reference, str(tmp_path / 'b.nii')
    )
  with pytest.raises(ValueError, match=r'labels must be in \[0, 255\]'):
    predict.write_segmentation(
      labels.astype(np.int16) * 100, reference, str(tmp_path / 'c.nii')
    )
  assert not any(
    os.path.exists(tmp_path / n) for n in ('a.nii', 'b.nii', 'c.nii')
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
  result = predict.predict_prepared_case(
    case_files.marker_predictor(), serialized, record, window=8
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
  from_files = predict.predict_case(
    case_files.marker_predictor(), case, window=8, return_probabilities=True
  )
  np.testing.assert_array_equal(result.labels, from_files.labels)
  np.testing.assert_array_equal(
    result.cropped_probabilities, from_files.probabilities[crop]
  )


def test_prepared_case_from_the_evaluation_dataset(tmp_path):
  _, serialized, record = _prepared(tmp_path)
  shard = str(tmp_path / 'validation-00000-of-00001.tfrecord')
  with tf.io.TFRecordWriter(shard) as writer:
    writer.write(serialized)
  (element,) = list(pipeline.make_evaluation_dataset([shard]))
  parsed = records.parse_case(tf.constant(serialized))
  predictor = predict.from_keras_model(case_files.tiny_keras_model())
  results = [
    predict.predict_prepared_case(
      predictor, element, record, normalized=True, window=8
    ),
    predict.predict_prepared_case(predictor, parsed, record, window=8),
    predict.predict_prepared_case(
      predictor, tf.constant(serialized), record, window=8
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
  other_id = manifest_lib.CaseRecord(
    **{**record.__dict__, 'case_id': 'Brats18_CBICA_ZZZ_1'}
  )
  with pytest.raises(ValueError, match="Found case 'Brats18_CBICA_AAA_1'"):
    predict.predict_prepared_case(
      case_files.marker_predictor(), serialized, other_id, window=8
    )
  other_box = manifest_lib.CaseRecord(
    **{**record.__dict__, 'crop_box': ((0, 12), (0, 12), (0, 9))}
  )
  with pytest.raises(
    ValueError,
    match=r'cropped shape .*\(12, 12, 9, 4\). Found \(12, 12, 8, 4\)',
  ):
    predict.predict_prepared_case(
      case_files.marker_predictor(), serialized, other_box, window=8
    )
  with pytest.raises(ValueError, match='normalized must be False'):
    predict.predict_prepared_case(
      case_files.marker_predictor(),
      serialized,
      record,
      normalized=True,
      window=8,
    )


def test_paste_crop():
  cropped = np.arange(2 * 3 * 1).reshape(2, 3, 1) + 1
  full = predict.paste_crop(cropped, ((1, 3), (0, 3), (2, 3)), (4, 3, 5))
  assert full.shape == (4, 3, 5) and full.dtype == cropped.dtype
  np.testing.assert_array_equal(full[1:3, 0:3, 2:3], cropped)
  assert full.sum() == cropped.sum()
  with pytest.raises(ValueError, match='crop_box must be 3 .* inside shape'):
    predict.paste_crop(cropped, ((1, 3), (0, 3), (2, 6)), (4, 3, 5))
  with pytest.raises(ValueError, match='cropped must have the crop box size'):
    predict.paste_crop(cropped, ((0, 3), (0, 3), (2, 3)), (4, 3, 5))


# Input forms and runs over several cases.


def test_resolve_each_input_form(tmp_path):
  folder18 = case_files.write_case(tmp_path / 'data', ID18)
  folder23 = case_files.write_case(tmp_path / 'data', ID23, B23)
  (by_dir,) = predict.resolve_cases(case_dir=folder18)
  assert by_dir.case_id == ID18 and by_dir.layout is B18
  assert [
    c.case_id for c in predict.resolve_cases(data_dir=tmp_path / 'data')
  ] == [
    ID23,
    ID18,
  ]
  files = {
    m: case_files.modality_path(folder23, B23, m) for m in B23.modalities
  }
  (by_files,) = predict.resolve_cases(image_paths=files)
  assert by_files.case_id == ID23 and by_files.layout is B23
  (named,) = predict.resolve_cases(image_paths=files, case_id='mine')
  assert named.case_id == 'mine'
  assert named.image_paths == tuple(files[m] for m in B23.modalities)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({}, 'exactly one input form must be given.*Found none.'),
    (
      {'case_dir': 'a', 'data_dir': 'b'},
      'exactly one input form.*Found case_dir and data_dir.',
    ),
    (
      {'case_dir': 'a', 'image_paths': {'t1': 'x'}},
      'Found case_dir and image_paths.',
    ),
    (
      {'data_dir': 'b', 'case_id': 'c'},
      "case_id must only be given with image_paths.*'c'",
    ),
    (
      {'image_paths': {'t1': 'a', 't1ce': 'b', 'flair': 'c'}},
      r"missing \['t2'\]",
    ),
    (
      {'image_paths': {'t1': 'a', 't1c': 'b', 't2': 'c', 't2f': 'd'}},
      r'one layout.*Found t1 \(brats2018\), t1c \(brats2023\)',
    ),
  ],
)
def test_resolve_rejects_bad_forms(kwargs, message):
  with pytest.raises(ValueError, match=message):
    predict.resolve_cases(**kwargs)


def test_segment_cases_checks_every_output_before_any_work(tmp_path):
  case_files.write_case(tmp_path / 'data', ID18)
  case_files.write_case(tmp_path / 'data', ID23, B23)
  cases = predict.resolve_cases(data_dir=str(tmp_path / 'data'))
  out = tmp_path / 'out'
  out.mkdir()
  (out / f'{ID18}.nii.gz').write_bytes(b'old')  # the second case's output
  calls = []

  def counting(batch):
    calls.append(1)
    return case_files.marker_predictor()(batch)

  with pytest.raises(FileExistsError, match=f'{ID18}.nii.gz'):
    predict.segment_cases(counting, cases, str(out), window=8, progress=False)
  assert not calls
  assert sorted(os.listdir(out)) == [f'{ID18}.nii.gz']
  written = predict.segment_cases(
    counting, cases, str(out), window=8, overwrite=True, progress=False
  )
  assert written == [str(out / f'{ID23}.nii.gz'), str(out / f'{ID18}.nii.gz')]
  for path, layout in zip(written, (B23, B18), strict=True):
    np.testing.assert_array_equal(
      np.asanyarray(nib.load(path).dataobj), _expected_labels(layout)
    )
