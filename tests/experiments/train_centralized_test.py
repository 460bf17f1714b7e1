"""The centralised story through the binaries, as a user runs it.

Synthetic NIfTI cases -> prepare -> train_centralized -> evaluate ->
export_model -> predict, each binary in a child process (binaries share
absl flag names, so they are never imported into the pytest process).
"""

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tff_brats.data import prepare
from tff_brats.data import synthetic

# Five child processes that import TensorFlow and train a little.
pytestmark = pytest.mark.slow

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _run(binary, *flags):
  result = subprocess.run(
    [sys.executable, '-m', f'experiments.{binary}', *flags],
    capture_output=True,
    text=True,
    cwd=_REPO,
    check=False,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp('story')
  nifti = str(root / 'synthetic')
  synthetic.generate_dataset(
    nifti,
    num_cases=6,
    num_institutions=2,
    shape=(24, 24, 24),
    lgg_fraction=0.0,
    seed=4,
    progress=False,
  )
  prepared = str(root / 'prepared')
  prepare.prepare_dataset(
    nifti, prepared, validation_fraction=0.34, progress=False
  )
  return root, nifti, prepared


def test_train_evaluate_export_predict(workspace):
  root, nifti, prepared = workspace
  runs = str(root / 'runs')
  trained = _run(
    'train_centralized',
    '--noprogress',
    f'--data_dir={prepared}',
    f'--root_output_dir={runs}',
    '--experiment_name=tiny',
    '--epochs=2',
    '--crop_size=16,16,16',
    '--init_filters=8',
    '--learning_rate=1e-3',
  )
  run_dir = os.path.join(runs, 'tiny')
  assert f'Run folder: {run_dir}' in trained.stdout
  with open(os.path.join(run_dir, 'metrics.csv')) as f:
    assert [r['epoch'] for r in csv.DictReader(f)] == ['1', '2']

  # No --window: evaluate and predict slide the recorded training crop.
  evaluation = str(root / 'evaluation')
  evaluated = _run(
    'evaluate',
    '--noprogress',
    f'--model={run_dir}/best_model',
    f'--data_dir={prepared}',
    f'--output_dir={evaluation}',
    '--num_figure_cases=2',
  )
  assert 'per_case_csv' in evaluated.stdout
  assert 'records no training crop' not in evaluated.stderr
  assert 'differs from' not in evaluated.stderr
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

  exported = str(root / 'exported')
  exported_run = _run(
    'export_model',
    f'--model_dir={run_dir}/best_model',
    f'--output_dir={exported}',
  )
  assert os.path.exists(os.path.join(exported, 'saved_model.pb'))
  assert (
    'Training record: crop [16, 16, 16], crop margin 0.' in exported_run.stdout
  )

  predictions = str(root / 'predictions')
  case_dir = os.path.join(nifti, 'HGG', validation[0])
  for model in (exported, f'{run_dir}/best_model'):
    out = predictions + ('_saved' if model == exported else '_folder')
    predicted = _run(
      'predict',
      '--noprogress',
      f'--model={model}',
      f'--case_dir={case_dir}',
      f'--output_dir={out}',
    )
    assert 'records no training crop' not in predicted.stderr
    assert 'differs from' not in predicted.stderr
    written = nib.load(os.path.join(out, f'{validation[0]}.nii.gz'))
    source = nib.load(os.path.join(case_dir, f'{validation[0]}_flair.nii.gz'))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
