"""Tests of the evaluate binary: `main` in-process, one child run.

`tff_brats.evaluation.evaluate` is tested in tests/evaluation/; these tests
check that the flags reach `run_evaluation` (the binary's files equal the
library's for the same options) and what a user sees.
"""

import csv
import json
import logging
import os

from absl import app
from absl.testing import flagsaver
import pytest

from experiments import evaluate as evaluate_binary
from tests import testing_utils
from tests.experiments import binaries
from tests.inference import case_files
from tff_brats.evaluation import evaluate
from tff_brats.inference import options as options_lib
from tff_brats.models import model_io
from tff_brats.models import training_metadata

_RECORD = training_metadata.TrainingMetadata((8, 8, 8), crop_margin=0)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('prepared'))
  testing_utils.write_prepared_folder(
    root,
    {'a': [(16, 16, 16)], 'b': [(16, 16, 16)]},
    validation_shapes=[(16, 16, 16), (16, 12, 16)],
  )
  return root


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  """A SegResNet folder that records 8³ training crops."""
  path = str(tmp_path_factory.mktemp('model') / 'best_model')
  model_io.save_model(case_files.tiny_segresnet(seed=3), path, training=_RECORD)
  return path


@pytest.fixture(scope='module')
def unrecorded_model_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('model') / 'old_model')
  model_io.save_model(case_files.tiny_segresnet(seed=3), path)
  return path


def _main(argv=('evaluate',), **flag_values):
  with flagsaver.flagsaver(**flag_values):
    evaluate_binary.main(list(argv))


def _read(folder):
  with open(os.path.join(folder, 'per_case.csv')) as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(folder, 'summary.json')) as f:
    summary = json.load(f)
  return rows, summary


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


def test_scores_like_the_library_with_the_flags_options(
  model_dir, data_dir, tmp_path, capsys, caplog
):
  out = str(tmp_path / 'eval')
  with flagsaver.as_parsed(window='8', probability_threshold='0.4'):
    _main(
      model=model_dir,
      data_dir=data_dir,
      output_dir=out,
      overlap=0.25,
      blending='constant',
      sigma_scale=0.25,
      window_batch_size=2,
      num_figure_cases=1,
    )
  captured = capsys.readouterr()
  assert captured.out.splitlines() == [
    f'per_case_csv: {out}/per_case.csv',
    f'summary_json: {out}/summary.json',
    f'figure: {out}/cases.png',
  ]
  assert 'evaluating' in captured.err  # the progress bar
  assert _warnings(caplog) == []  # the window is the training crop
  rows, summary = _read(out)
  assert summary['window'] == [8, 8, 8]
  assert summary['overlap'] == 0.25
  assert summary['blending'] == 'constant'
  assert summary['sigma_scale'] == 0.25
  assert summary['threshold'] == 0.4
  assert summary['batch_size'] == 2
  assert summary['cases'] == 'validation'
  assert summary['training'] == {'crop_size': [8, 8, 8], 'crop_margin': 0}
  assert sorted({r['case_id'] for r in rows}) == [
    'validation_case000',
    'validation_case001',
  ]
  assert os.path.getsize(os.path.join(out, 'cases.png')) > 1000
  # The library with the same options writes the same scores.
  reference = str(tmp_path / 'reference')
  evaluate.run_evaluation(
    model=model_dir,
    data_dir=data_dir,
    output_dir=reference,
    options=options_lib.InferenceOptions(
      window=8,
      overlap=0.25,
      blending='constant',
      sigma_scale=0.25,
      threshold=0.4,
      batch_size=2,
    ),
    num_figure_cases=0,
    progress=False,
  )
  reference_rows, reference_summary = _read(reference)
  assert rows == reference_rows
  assert summary['summary'] == reference_summary['summary']


def test_cases_and_no_figure(model_dir, data_dir, tmp_path, capsys):
  out = str(tmp_path / 'eval')
  _main(
    model=model_dir,
    data_dir=data_dir,
    output_dir=out,
    cases='client:a',
    num_figure_cases=0,
    progress=False,
  )
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(':')[0] for line in lines] == [
    'per_case_csv',
    'summary_json',
  ]
  assert sorted(os.listdir(out)) == ['per_case.csv', 'summary.json']
  rows, summary = _read(out)
  assert {r['case_id'] for r in rows} == {'a_case000'}
  assert {r['region'] for r in rows} == {'TC', 'WT', 'ET', 'mean'}
  assert summary['num_cases'] == 1
  assert summary['window'] == [8, 8, 8]  # the recorded training crop
  assert summary['sigma_scale'] == 0.125  # the defaults
  assert summary['threshold'] == 0.5
  assert summary['batch_size'] == 1


def test_window_warnings(
  model_dir, unrecorded_model_dir, data_dir, tmp_path, caplog
):
  flag_values = dict(data_dir=data_dir, num_figure_cases=0, progress=False)
  _main(
    model=model_dir, output_dir=str(tmp_path / 'a'), window=[16], **flag_values
  )
  (warning,) = _warnings(caplog)
  assert warning.startswith(
    "window (16, 16, 16) differs from the model's training crop, (8, 8, 8)"
  )
  caplog.clear()
  _main(
    model=unrecorded_model_dir, output_dir=str(tmp_path / 'b'), **flag_values
  )
  (warning,) = _warnings(caplog)
  assert 'The model records no training crop' in warning
  assert str(evaluate.DEFAULT_WINDOW) in warning
  _, summary = _read(str(tmp_path / 'b'))
  assert summary['window'] == [64, 64, 64]


def test_existing_outputs_need_overwrite(model_dir, data_dir, tmp_path):
  out = tmp_path / 'eval'
  out.mkdir()
  (out / 'summary.json').write_text('previous')
  flag_values = dict(
    model=model_dir, data_dir=data_dir, output_dir=str(out), progress=False
  )
  with pytest.raises(SystemExit) as exit_info:
    _main(**flag_values, num_figure_cases=0)
  assert str(exit_info.value) == (
    f'evaluate: error: {out}/summary.json exists; pass overwrite=True '
    '(--overwrite) to replace it.'
  )
  assert (out / 'summary.json').read_text() == 'previous'
  _main(**flag_values, num_figure_cases=0, overwrite=True)
  assert _read(str(out))[1]['num_cases'] == 2


@pytest.mark.parametrize(
  'flag_values, message',
  [
    (dict(cases='client:z'), 'client'),
    (dict(probability_threshold=1.5), 'Found 1.5'),
    (dict(window_batch_size=0), 'batch_size'),
    (dict(window=[6]), 'window must be a multiple of 4'),
  ],
)
def test_bad_values_are_one_line_errors(
  model_dir, data_dir, tmp_path, flag_values, message
):
  with pytest.raises(SystemExit) as exit_info:
    _main(
      model=model_dir,
      data_dir=data_dir,
      output_dir=str(tmp_path / 'eval'),
      **flag_values,
    )
  assert str(exit_info.value).startswith('evaluate: error: ')
  assert message in str(exit_info.value)
  assert '\n' not in str(exit_info.value)
  assert not (tmp_path / 'eval').exists()


def test_missing_flags_and_stray_arguments(model_dir, data_dir, tmp_path):
  with pytest.raises(
    app.UsageError, match=r'--model, --data_dir, --output_dir$'
  ):
    _main()
  with pytest.raises(
    app.UsageError, match=r"Unexpected arguments: \['extra'\]"
  ):
    _main(
      ['evaluate', 'extra'],
      model=model_dir,
      data_dir=data_dir,
      output_dir=str(tmp_path / 'eval'),
    )
  assert not (tmp_path / 'eval').exists()


def test_smoke_child_process(model_dir, data_dir, tmp_path):
  out = tmp_path / 'eval'
  result = binaries.run_binary(
    'evaluate',
    f'--model={model_dir}',
    f'--data_dir={data_dir}',
    f'--output_dir={out}',
    '--num_figure_cases=0',
    '--noprogress',
  )
  assert result.returncode == 0, result.stderr
  assert f'summary_json: {out}/summary.json' in result.stdout
  assert _read(str(out))[1]['num_cases'] == 2
