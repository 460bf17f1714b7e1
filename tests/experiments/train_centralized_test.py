"""Tests of the train_centralized binary and the centralised story.

The story runs every binary's `main` in-process, as a user chains them:
synthetic NIfTI cases -> prepare -> train_centralized -> evaluate ->
export_model -> predict. `tff_brats.training.centralized` is tested in
tests/training/centralized_test.py. One child process checks that
`python -m experiments.train_centralized` runs.
"""

import csv
import json
import logging
import os

from absl import app
from absl.testing import flagsaver
import nibabel as nib
import numpy as np
import pytest

from experiments import evaluate
from experiments import export_model
from experiments import predict
from experiments import prepare_data
from experiments import train_centralized
from tests.experiments import binaries
from tff_brats.data import synthetic
from tff_brats.training import centralized


def _main(module, argv=None, **flag_values):
  with flagsaver.flagsaver(**flag_values):
    module.main(argv or [module.__name__.split('.')[-1]])


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


# ------------------------------------------------------------- the flags --


def test_config_defaults_are_the_librarys(tmp_path):
  # One default per flag, and the same as the library's.
  with flagsaver.flagsaver(data_dir=str(tmp_path)):
    config = train_centralized.config_from_flags()
  assert config == centralized.CentralizedConfig(data_dir=str(tmp_path))


def test_config_from_flags(tmp_path):
  with flagsaver.as_parsed(
    crop_size='16,16,24',
    eval_window='32,32,32',
    blocks_down='2,1',
    blocks_up='1',
  ):
    with flagsaver.flagsaver(
      data_dir='prepared',
      epochs=3,
      learning_rate=3e-4,
      batch_size=2,
      init_filters=8,
      loss='dice',
      tumour_crop_probability=0.5,
      crops_per_case=2,
      epochs_per_eval=2,
      eval_overlap=0.25,
      max_eval_cases=4,
      num_overlay_cases=0,
      seed=-1,
    ):
      config = train_centralized.config_from_flags()
  assert config == centralized.CentralizedConfig(
    data_dir=os.path.abspath('prepared'),
    epochs=3,
    learning_rate=3e-4,
    crop_size=(16, 16, 24),
    batch_size=2,
    init_filters=8,
    blocks_down=(2, 1),
    blocks_up=(1,),
    loss='dice',
    tumour_crop_probability=0.5,
    crops_per_case=2,
    epochs_per_eval=2,
    eval_window=(32, 32, 32),
    eval_overlap=0.25,
    max_eval_cases=4,
    num_overlay_cases=0,
    seed=None,
  )


def test_flag_errors(tmp_path):
  with pytest.raises(app.UsageError, match=r'--data_dir, --root_output_dir$'):
    _main(train_centralized)
  flag_values = dict(data_dir=str(tmp_path), root_output_dir=str(tmp_path))
  with pytest.raises(app.UsageError, match=r"Unexpected arguments: \['x'\]"):
    _main(train_centralized, ['train_centralized', 'x'], **flag_values)
  with pytest.raises(SystemExit) as exit_info:
    _main(train_centralized, crop_size=[16, 16, 12], **flag_values)
  assert str(exit_info.value) == (
    'train_centralized: error: crop_size must be 3 positive multiples of 8. '
    'Found (16, 16, 12).'
  )
  assert os.listdir(tmp_path) == []


def test_smoke_child_process():
  # The story below trains in-process; the child shows the binary starts,
  # parses and lists its own and the shared flags it reads.
  result = binaries.run_binary('train_centralized', '--help')
  assert result.returncode == 1, result.stderr  # absl's exit after --help
  for flag in ('--epochs', '--data_dir', '--crop_size', '--batch_size'):
    assert flag in result.stdout
  assert '--privacy_mechanism' not in result.stdout


# ------------------------------------------------------------- the story --


@pytest.fixture(scope='module')
def nifti_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('story') / 'synthetic')
  synthetic.generate_dataset(
    path,
    num_cases=6,
    num_institutions=2,
    shape=(24, 24, 24),
    lgg_fraction=0.0,
    seed=4,
    progress=False,
  )
  return path


@pytest.mark.slow  # trains SegResNet-8 for two epochs
def test_train_evaluate_export_predict(nifti_dir, tmp_path, capsys, caplog):
  prepared = str(tmp_path / 'prepared')
  _main(
    prepare_data,
    data_dir=nifti_dir,
    output_dir=prepared,
    validation_fraction=0.34,
    progress=False,
  )
  runs = str(tmp_path / 'runs')
  _main(
    train_centralized,
    data_dir=prepared,
    root_output_dir=runs,
    experiment_name='tiny',
    epochs=2,
    crop_size=[16, 16, 16],
    init_filters=8,
    blocks_down=[1, 1],
    blocks_up=[1],
    learning_rate=1e-3,
    progress=False,
  )
  run_dir = os.path.join(runs, 'tiny')
  assert f'Run folder: {run_dir}' in capsys.readouterr().out
  with open(os.path.join(run_dir, 'metrics.csv')) as f:
    assert [r['epoch'] for r in csv.DictReader(f)] == ['1', '2']

  # No --window: evaluate and predict slide the recorded training crop.
  caplog.clear()
  evaluation = str(tmp_path / 'evaluation')
  _main(
    evaluate,
    model=f'{run_dir}/best_model',
    data_dir=prepared,
    output_dir=evaluation,
    num_figure_cases=2,
    progress=False,
  )
  assert 'per_case_csv' in capsys.readouterr().out
  # Neither 'records no training crop' nor 'differs from'.
  assert _warnings(caplog) == []
  with open(os.path.join(evaluation, 'per_case.csv')) as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(prepared, 'manifest.json')) as f:
    validation = json.load(f)['validation']['case_ids']
  assert sorted({r['case_id'] for r in rows}) == sorted(validation)
  assert {r['region'] for r in rows} == {'TC', 'WT', 'ET', 'mean'}
  for row in rows:
    assert 0.0 <= float(row['dice']) <= 1.0
  with open(os.path.join(evaluation, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['num_cases'] == len(validation)
  assert summary['window'] == [16, 16, 16]
  assert summary['training'] == {'crop_size': [16, 16, 16], 'crop_margin': 0}
  assert set(summary['summary']['dice_WT']) == {'mean', 'median', 'std'}
  assert os.path.getsize(os.path.join(evaluation, 'cases.png')) > 1000

  exported = str(tmp_path / 'exported')
  _main(export_model, model_dir=f'{run_dir}/best_model', output_dir=exported)
  assert os.path.exists(os.path.join(exported, 'saved_model.pb'))
  assert (
    'Training record: crop [16, 16, 16], crop margin 0.'
    in capsys.readouterr().out
  )

  predictions = str(tmp_path / 'predictions')
  case_dir = os.path.join(nifti_dir, 'HGG', validation[0])
  for model in (exported, f'{run_dir}/best_model'):
    out = predictions + ('_saved' if model == exported else '_folder')
    _main(
      predict, model=model, case_dir=case_dir, output_dir=out, progress=False
    )
    assert _warnings(caplog) == []
    written = nib.load(os.path.join(out, f'{validation[0]}.nii.gz'))
    source = nib.load(os.path.join(case_dir, f'{validation[0]}_flair.nii.gz'))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
