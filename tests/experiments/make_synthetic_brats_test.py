"""Tests of the make_synthetic_brats binary, run as a user runs it.

Binaries define absl flags at import time and several share flag names
(`output_dir`, `seed`, ...), so tests never import them into the pytest
process; each test runs the binary in a child process.
"""

import json
import os
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _run(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'experiments.make_synthetic_brats', *flags],
    capture_output=True,
    text=True,
    cwd=_REPO,
    check=False,
    timeout=300,
  )


def test_writes_the_data_and_reports_it(tmp_path):
  out = str(tmp_path / 'out')
  result = _run(
    f'--output_dir={out}',
    '--num_cases=3',
    '--num_institutions=2',
    '--shape=24,24,24',
    '--lgg_fraction=0',
  )
  assert result.returncode == 0, result.stderr
  assert f'Synthetic BraTS data in {out}' in result.stdout
  assert '2013' in result.stdout and '2 cases (2 HGG, 0 LGG)' in result.stdout
  assert 'CBICA' in result.stdout and '1 case (1 HGG, 0 LGG)' in result.stdout
  assert os.path.exists(
    os.path.join(out, 'HGG/Brats18_CBICA_001_1/Brats18_CBICA_001_1_t1ce.nii.gz')
  )


def test_flags_become_the_recorded_parameters(tmp_path):
  out = str(tmp_path / 'out')
  result = _run(
    f'--output_dir={out}',
    '--num_cases=5',
    '--num_institutions=3',
    '--shape=16,20,24',
    '--spacing=1,1.5,2',
    '--layout=brats2023',
    '--institution_sizes=paper',
    '--lgg_fraction=0.25',
    '--seed=7',
    '--noprogress',
  )
  assert result.returncode == 0, result.stderr
  assert 'synthetic cases:' not in result.stderr  # --noprogress
  with open(os.path.join(out, 'synthetic.json')) as f:
    parameters = json.load(f)['parameters']
  assert parameters == {
    'num_cases': 5,
    'num_institutions': 3,
    'shape': [16, 20, 24],
    'spacing': [1.0, 1.5, 2.0],
    'layout': 'brats2023',
    'grade_folders': False,
    'institution_sizes': 'paper',
    'lgg_fraction': 0.25,
    'seed': 7,
  }


def test_rerun_is_a_no_op_and_other_flags_need_overwrite(tmp_path):
  out = str(tmp_path / 'out')
  command = [
    f'--output_dir={out}',
    '--num_cases=2',
    '--num_institutions=2',
    '--shape=16,16,16',
    '--layout=brats2023',
  ]
  first = _run(*command)
  assert first.returncode == 0, first.stderr
  assert 'synthetic cases:' in first.stderr  # the progress bar
  assert sorted(os.listdir(out)) == [
    'BraTS-2013-00000-000',
    'BraTS-CBICA-00001-000',
    'synthetic.json',
  ]
  again = _run(*command)
  assert again.returncode == 0, again.stderr
  assert 'nothing to do' in again.stderr
  other = _run(*command, '--seed=3')
  assert other.returncode != 0
  assert 'seed=3 (on disk: 0)' in other.stderr
  assert 'make_synthetic_brats: error:' in other.stderr
  assert 'Traceback' not in other.stderr
  replaced = _run(*command, '--seed=3', '--overwrite')
  assert replaced.returncode == 0, replaced.stderr
  with open(os.path.join(out, 'synthetic.json')) as f:
    assert json.load(f)['parameters']['seed'] == 3


def test_stray_arguments_are_rejected(tmp_path):
  out = str(tmp_path / 'out')
  result = _run(f'--output_dir={out}', '--shape=16,16,16', 'extra')
  assert result.returncode != 0
  assert "Unexpected arguments: ['extra']" in result.stderr
  assert not os.path.exists(out)


def test_bad_shape_is_a_usage_error(tmp_path):
  out = str(tmp_path / 'out')
  result = _run(f'--output_dir={out}', '--shape=24,x,24')
  assert result.returncode != 0
  assert "--shape must be 3 comma-separated numbers. Found '24,x,24'" in (
    result.stderr
  )
  assert not os.path.exists(out)


def test_missing_output_dir_is_a_usage_error():
  result = _run('--num_cases=2')
  assert result.returncode != 0
  assert 'output_dir' in result.stderr
