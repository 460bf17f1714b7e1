"""Tests of the predict binary: `main` in-process, one child run.

The library (`tff_brats.inference`) is tested in tests/inference/; these
tests check that the flags reach it and what a user sees. Every bad input
must stop with one line naming the case, the file and the value, without
writing any output.
"""

from __future__ import annotations

import gzip
import logging
import os
import pathlib
import shutil

from absl import app
from absl.testing import flagsaver
import nibabel as nib
import numpy as np
import pytest

from experiments import predict
from tests.experiments import binaries
from tests.inference import case_files
from tff_brats.data import layouts
from tff_brats.data import reader
from tff_brats.inference import case_prediction
from tff_brats.inference import export
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.models import model_io
from tff_brats.models import training_metadata

B18 = layouts.BRATS2018
B23 = layouts.BRATS2023
ID18 = 'Brats18_CBICA_AAA_1'
ID23 = 'BraTS-GLI-00002-000'


def _main(argv=('predict',), **flag_values):
  with flagsaver.flagsaver(**flag_values):
    predict.main(list(argv))


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('model') / 'saved_model')
  return export.export_saved_model(
    case_files.tiny_keras_model(seed=4), path, size_multiple=4
  )


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('data') / 'brats'
  case_files.write_case(root / 'HGG', ID18, B18)
  case_files.write_case(
    root, ID23, B23, image=case_files.make_image(seed=1), labels=None
  )
  return str(root)


def _outputs(folder):
  folder = pathlib.Path(folder)
  return sorted(os.listdir(folder)) if folder.exists() else []


def _check_error(*parts, **flag_values):
  """Runs `main`, which must stop with one line holding every part."""
  with pytest.raises(SystemExit) as exit_info:
    _main(**flag_values)
  message = str(exit_info.value)
  assert message.startswith('predict: error: '), message
  assert '\n' not in message, message
  for part in parts:
    assert str(part) in message, (part, message)


def _warnings(caplog):
  """The warnings about the window or crop margin against the model's record."""
  return [
    r.getMessage()
    for r in caplog.records
    if r.levelno == logging.WARNING
    and any(
      part in r.getMessage()
      for part in ('records no training crop', 'differs from', 'crop_margin')
    )
  ]


def test_segments_a_folder_of_cases(model_dir, data_dir, tmp_path, capsys):
  out = tmp_path / 'out'
  _main(
    model=model_dir,
    data_dir=data_dir,
    output_dir=str(out),
    window=[8, 8, 8],
    window_batch_size=2,
  )
  captured = capsys.readouterr()
  assert _outputs(out) == [f'{ID23}.nii.gz', f'{ID18}.nii.gz']
  assert f'Wrote 2 segmentation(s) to {out}' in captured.out
  assert 'segmenting cases' in captured.err  # the progress bar
  # The binary's output is the library's prediction, written on the input's
  # grid with its header.
  predictor = predictors.load_predictor(model_dir)
  outside = np.ones(case_files.SHAPE, bool)
  outside[tuple(slice(a, b) for a, b in case_files.BOX)] = False
  for case in reader.discover_cases(data_dir, require_label=False):
    written = nib.load(str(out / f'{case.case_id}.nii.gz'))
    reference = nib.load(case.image_paths[0])
    labels = np.asanyarray(written.dataobj)
    assert labels.dtype == np.uint8 and labels.shape == case_files.SHAPE
    assert np.all(labels[outside] == 0)
    expected = case_prediction.predict_case(
      predictor, case, options_lib.InferenceOptions(window=8, batch_size=2)
    ).labels
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) <= set(case.layout.labels)
    np.testing.assert_array_equal(written.affine, reference.affine)
    assert written.header['qform_code'] == reference.header['qform_code']
    assert written.header['sform_code'] == reference.header['sform_code']
    assert written.header.get_zooms() == reference.header.get_zooms()


def test_explicit_files_case_id_and_output_layout(
  model_dir, data_dir, tmp_path, capsys
):
  folder = os.path.join(data_dir, ID23)
  files = {m: case_files.modality_path(folder, B23, m) for m in B23.modalities}
  out = tmp_path / 'out'
  # Strings as on a command line: --window=16 is a 16³ window.
  with flagsaver.as_parsed(
    window='16', overlap='0.25', probability_threshold='0.4'
  ):
    _main(
      model=model_dir,
      **files,
      case_id='patient7',
      output_dir=str(out),
      blending='constant',
      output_layout='brats2018',
      progress=False,
    )
  assert _outputs(out) == ['patient7.nii.gz']
  assert 'segmenting cases' not in capsys.readouterr().err
  case = reader.case_from_directory(folder, require_label=False)
  expected = case_prediction.predict_case(
    predictors.load_predictor(model_dir),
    case,
    options_lib.InferenceOptions(
      window=16,
      overlap=0.25,
      blending='constant',
      threshold=0.4,
      output_layout='brats2018',
    ),
  ).labels
  labels = np.asanyarray(nib.load(str(out / 'patient7.nii.gz')).dataobj)
  np.testing.assert_array_equal(labels, expected)
  assert not np.isin(labels, [3]).any()


def test_existing_output_needs_overwrite(model_dir, data_dir, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  existing = out / f'{ID18}.nii.gz'
  existing.write_bytes(b'previous result')
  flag_values = dict(
    model=model_dir,
    case_dir=os.path.join(data_dir, 'HGG', ID18),
    output_dir=str(out),
    window=[8],
  )
  _check_error('must not exist unless', '--overwrite', existing, **flag_values)
  assert existing.read_bytes() == b'previous result'
  assert _outputs(out) == [f'{ID18}.nii.gz']
  _main(**flag_values, overwrite=True)
  assert nib.load(str(existing)).shape == case_files.SHAPE
  assert _outputs(out) == [f'{ID18}.nii.gz']


def _write_bad_case(root, problem):
  """A case folder with one problem; returns (folder, bad file, value)."""
  folder = case_files.write_case(root, ID18)
  t1ce = case_files.modality_path(folder, B18, 't1ce')
  if problem == 'missing modality':
    flair = case_files.modality_path(folder, B18, 'flair')
    os.remove(flair)
    return folder, flair, "modality 'flair' must be present"
  if problem == 'shape mismatch':
    case_files.write_nifti(t1ce, np.ones((20, 18, 15), np.int16))
    return folder, t1ce, 'Found (20, 18, 15)'
  if problem == 'affine mismatch':
    shifted = case_files.AFFINE.copy()
    shifted[0, 3] += 0.5
    image = case_files.make_image()[..., 1].astype(np.int16)
    case_files.write_nifti(t1ce, image, shifted)
    return folder, t1ce, 'largest absolute difference of 0.5'
  if problem == 'nan':
    image = case_files.make_image()[..., 1]
    image[4, 5, 6] = np.nan
    case_files.write_nifti(t1ce, image)
    return (
      folder,
      t1ce,
      'Found 1 NaN and 0 Inf voxel(s), the first at index (4, 5, 6)',
    )
  if problem == 'truncated':
    data = pathlib.Path(t1ce).read_bytes()
    pathlib.Path(t1ce).write_bytes(data[: len(data) // 2])
    return folder, t1ce, 'truncated or corrupt gzip'
  if problem == 'not nifti':
    pathlib.Path(t1ce).write_bytes(gzip.compress(b'just some text'))
    return (
      folder,
      t1ce,
      "must be a NIfTI-1 or NIfTI-2 image. Found no NIfTI header but data starting with b'just som'",
    )
  raise AssertionError(problem)


@pytest.mark.parametrize(
  'problem, form',
  [
    ('missing modality', 'case_dir'),
    ('missing modality', 'data_dir'),
    ('shape mismatch', 'case_dir'),
    ('affine mismatch', 'case_dir'),
    ('nan', 'case_dir'),
    ('nan', 'data_dir'),
    ('truncated', 'case_dir'),
    ('not nifti', 'case_dir'),
  ],
)
def test_bad_case_is_one_line_naming_case_file_and_value(
  model_dir, tmp_path, problem, form
):
  folder, bad_file, value = _write_bad_case(tmp_path / 'data', problem)
  source = folder if form == 'case_dir' else str(tmp_path / 'data')
  out = tmp_path / 'out'
  _check_error(
    f"case '{ID18}'",
    f"file '{bad_file}'",
    value,
    model=model_dir,
    output_dir=str(out),
    window=[8],
    **{form: source},
  )
  assert not [n for n in _outputs(out) if n.endswith('.nii.gz')]


def test_no_case_found(model_dir, tmp_path):
  (tmp_path / 'empty').mkdir()
  _check_error(
    'data_dir must hold BraTS case folders',
    'Found no case folder',
    model=model_dir,
    data_dir=str(tmp_path / 'empty'),
    output_dir=str(tmp_path / 'out'),
  )
  assert _outputs(tmp_path / 'out') == []


def test_missing_model(data_dir, tmp_path):
  _check_error(
    'model must be an exported SavedModel folder',
    f"'{tmp_path / 'no_model'}', which does not exist",
    model=str(tmp_path / 'no_model'),
    data_dir=data_dir,
    output_dir=str(tmp_path / 'out'),
  )
  assert _outputs(tmp_path / 'out') == []


@pytest.mark.parametrize(
  'extra, message',
  [
    (
      {'case_dir': '{case}'},
      'exactly one input form must be given: case_dir, image_paths (the '
      'four modality files) or data_dir. Found case_dir and data_dir.',
    ),
    ({'t1': '{t1}'}, 'Found image_paths and data_dir.'),
    ({'case_id': 'x'}, 'case_id must only be given with image_paths'),
  ],
)
def test_conflicting_input_forms(model_dir, data_dir, tmp_path, extra, message):
  case = os.path.join(data_dir, 'HGG', ID18)
  t1 = case_files.modality_path(case, B18, 't1')
  _check_error(
    message,
    model=model_dir,
    data_dir=data_dir,
    output_dir=str(tmp_path / 'out'),
    **{k: v.format(case=case, t1=t1) for k, v in extra.items()},
  )
  assert _outputs(tmp_path / 'out') == []


def test_incomplete_and_mixed_modality_files(model_dir, data_dir, tmp_path):
  case = os.path.join(data_dir, 'HGG', ID18)
  t1, t2 = (case_files.modality_path(case, B18, m) for m in ('t1', 't2'))
  out = str(tmp_path / 'out')
  _check_error(
    "missing ['t1ce', 'flair']", model=model_dir, t1=t1, t2=t2, output_dir=out
  )
  _check_error(
    'Found t1 (brats2018), t2w (brats2023)',
    model=model_dir,
    t1=t1,
    t2w=t2,
    output_dir=out,
  )


def test_window_not_a_multiple_of_the_model(model_dir, data_dir, tmp_path):
  _check_error(
    'window must be a multiple of 4',
    '(6, 6, 6)',
    model=model_dir,
    data_dir=data_dir,
    output_dir=str(tmp_path / 'out'),
    window=[6],
  )
  assert not [n for n in _outputs(tmp_path / 'out') if n.endswith('.nii.gz')]


def test_bad_inference_flags_are_named(model_dir, data_dir, tmp_path):
  # The renamed flags reach InferenceOptions, which names the option.
  flag_values = dict(
    model=model_dir, data_dir=data_dir, output_dir=str(tmp_path / 'out')
  )
  _check_error(
    'threshold', 'Found 1.5', probability_threshold=1.5, **flag_values
  )
  _check_error('batch_size', 'Found 0', window_batch_size=0, **flag_values)
  assert _outputs(tmp_path / 'out') == []


def test_missing_flags_and_stray_arguments(model_dir, data_dir, tmp_path):
  with pytest.raises(app.UsageError, match=r'--model, --output_dir$'):
    _main(data_dir=data_dir)
  with pytest.raises(
    app.UsageError, match=r"Unexpected arguments: \['extra'\]"
  ):
    _main(
      ['predict', 'extra'],
      model=model_dir,
      data_dir=data_dir,
      output_dir=str(tmp_path / 'out'),
    )
  assert not (tmp_path / 'out').exists()


def test_model_folder_copy_is_enough(model_dir, data_dir, tmp_path):
  # The exported folder is self-contained: a copy elsewhere works.
  copy = shutil.copytree(model_dir, tmp_path / 'copied_model')
  _main(
    model=str(copy),
    case_dir=os.path.join(data_dir, 'HGG', ID18),
    output_dir=str(tmp_path / 'out'),
    window=[8],
    progress=False,
  )
  assert _outputs(tmp_path / 'out') == [f'{ID18}.nii.gz']


def test_model_io_folder(data_dir, tmp_path):
  model_path = str(tmp_path / 'model')
  model_io.save_model(case_files.tiny_segresnet(seed=2), model_path)
  out = tmp_path / 'out'
  case_dir = os.path.join(data_dir, 'HGG', ID18)
  _main(
    model=model_path,
    case_dir=case_dir,
    output_dir=str(out),
    window=[8],
    progress=False,
  )
  labels = np.asanyarray(nib.load(str(out / f'{ID18}.nii.gz')).dataobj)
  expected = case_prediction.predict_case(
    predictors.load_predictor(model_path),
    reader.case_from_directory(case_dir, require_label=False),
    options_lib.InferenceOptions(window=8),
  ).labels
  np.testing.assert_array_equal(labels, expected)


def test_window_and_margin_default_to_the_models_record(
  data_dir, tmp_path, caplog
):
  model_path = str(tmp_path / 'model')
  model_io.save_model(
    case_files.tiny_segresnet(seed=2),
    model_path,
    training=training_metadata.TrainingMetadata((8, 8, 4), crop_margin=1),
  )
  case_dir = os.path.join(data_dir, 'HGG', ID18)
  out = tmp_path / 'out'
  _main(
    model=model_path, case_dir=case_dir, output_dir=str(out), progress=False
  )
  # Neither 'records no training crop' nor 'differs from'.
  assert _warnings(caplog) == []
  labels = np.asanyarray(nib.load(str(out / f'{ID18}.nii.gz')).dataobj)
  expected = case_prediction.predict_case(
    predictors.load_predictor(model_path),
    reader.case_from_directory(case_dir, require_label=False),
    options_lib.InferenceOptions(window=(8, 8, 4), crop_margin=1),
  ).labels
  np.testing.assert_array_equal(labels, expected)
  # An explicit window and margin that differ are used, with warnings
  # naming both values.
  _main(
    model=model_path,
    case_dir=case_dir,
    output_dir=str(tmp_path / 'other'),
    window=[16],
    crop_margin=0,
    progress=False,
  )
  window_line, margin_line = [
    w for w in _warnings(caplog) if 'differs from' in w
  ]
  assert '(16, 16, 16)' in window_line and '(8, 8, 4)' in window_line
  assert 'crop_margin 0 differs' in margin_line and ', 1;' in margin_line


def test_a_model_without_record_warns_without_window(
  model_dir, tmp_path, caplog
):
  _main(
    model=model_dir,
    case_dir=case_files.write_case(tmp_path / 'data', ID18),
    output_dir=str(tmp_path / 'out'),
    progress=False,
  )
  (warning,) = _warnings(caplog)
  assert 'The model records no training crop' in warning
  assert str(options_lib.DEFAULT_WINDOW) in warning


def test_smoke_child_process(model_dir, data_dir, tmp_path):
  out = tmp_path / 'out'
  result = binaries.run_binary(
    'predict',
    f'--model={model_dir}',
    f'--case_dir={os.path.join(data_dir, "HGG", ID18)}',
    f'--output_dir={out}',
    '--window=8',
    '--noprogress',
  )
  assert result.returncode == 0, result.stderr
  assert f'Wrote 1 segmentation(s) to {out}.' in result.stdout
  labels = np.asanyarray(nib.load(str(out / f'{ID18}.nii.gz')).dataobj)
  assert labels.shape == case_files.SHAPE
